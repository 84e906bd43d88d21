/**
 * One HTTP/1.1 request over a fresh TCP connection bound to a chosen loopback
 * source address (127.0.0.2, ...), so a test can be "another client address".
 * The request target is sent exactly as given (no normalisation, unlike fetch).
 */
import { connect } from "node:net";

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export function rawRequest(
  port: number,
  opts: { from?: string; method?: string; target: string; headers?: Record<string, string>; body?: string; host?: string },
): Promise<RawResponse> {
  const body = opts.body ?? "";
  const headers: Record<string, string> = { host: opts.host ?? `127.0.0.1:${port}`, connection: "close", ...opts.headers };
  if (body !== "" || (opts.method ?? "GET") === "POST") headers["content-length"] = String(Buffer.byteLength(body));
  const head = `${opts.method ?? "GET"} ${opts.target} HTTP/1.1\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("")}\r\n`;
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, localAddress: opts.from ?? "127.0.0.1" });
    const chunks: Buffer[] = [];
    socket.setTimeout(10_000, () => {
      socket.destroy();
      reject(new Error(`no complete answer to ${opts.target} within 10 s`));
    });
    socket.on("connect", () => socket.write(head + body));
    socket.on("data", (d: Buffer) => chunks.push(d));
    socket.on("error", reject);
    socket.on("close", () => {
      const text = Buffer.concat(chunks).toString("latin1");
      const end = text.indexOf("\r\n\r\n");
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      if (end < 0 || m === null) return reject(new Error(`not an HTTP response to ${opts.target}: ${JSON.stringify(text.slice(0, 200))}`));
      const hdrs: Record<string, string> = {};
      for (const line of text.slice(0, end).split("\r\n").slice(1)) {
        const c = line.indexOf(":");
        if (c > 0) hdrs[line.slice(0, c).trim().toLowerCase()] = line.slice(c + 1).trim();
      }
      let rest = text.slice(end + 4);
      if (/chunked/i.test(hdrs["transfer-encoding"] ?? "")) {
        let out = "";
        for (;;) {
          const nl = rest.indexOf("\r\n");
          const size = parseInt(rest.slice(0, nl), 16);
          if (!(size > 0)) break;
          out += rest.slice(nl + 2, nl + 2 + size);
          rest = rest.slice(nl + 2 + size + 2);
        }
        rest = out;
      }
      resolve({ status: Number(m[1]), headers: hdrs, body: rest });
    });
  });
}
