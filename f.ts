const u = "http://127.0.0.1:18090";
const seq = process.argv.slice(2);
for (const s of seq) {
  try {
    const r = s === "g" ? await fetch(u + "/health") : await fetch(u + "/v1/events/payment_exhaust", { method: "POST", headers: { authorization: "Bearer wrongwrongwrongwrongwrong", "content-type": "application/json" }, body: "{not json" });
    console.log(s, r.status, (await r.text()).length);
  } catch (e) { console.log(s, "ERR", (e as Error).message); }
}
