import { reply, type Reply } from "./exchange.ts";

/**
 * RFC 9457 problem details: every error the service returns is
 * `application/problem+json` with a stable machine-readable `code`.
 */
export function problem(
  status: number,
  code: string,
  detail: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): Reply {
  return reply(status, problemBody(status, code, detail, extra), "application/problem+json", headers);
}

export function problemBody(status: number, code: string, detail: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ type: `urn:payflux:problem:${code}`, title: TITLES[status] ?? "Error", status, code, detail, ...extra });
}

const TITLES: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  404: "Not Found",
  405: "Method Not Allowed",
  413: "Content Too Large",
  415: "Unsupported Media Type",
  431: "Request Header Fields Too Large",
  422: "Unprocessable Content",
  429: "Too Many Requests",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

export function json(status: number, body: unknown, headers: Record<string, string> = {}): Reply {
  return reply(status, JSON.stringify(body), "application/json", headers);
}
