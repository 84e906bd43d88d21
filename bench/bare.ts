/**
 * The baseline: a bare Bun.serve that reads the body and answers 202 with a
 * small JSON body, as fast as this runtime goes on this machine. Prints its port.
 * Run: bun bench/bare.ts
 */
const body = '{"accepted":1,"duplicates":0}';
const server = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  async fetch(request) {
    await request.arrayBuffer();
    return new Response(body, { status: 202, headers: { "content-type": "application/json" } });
  },
});
console.log(JSON.stringify({ msg: "payflux listening", port: server.port }));
