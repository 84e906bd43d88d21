/**
 * Summarises a `bun --cpu-prof` profile: self time by function, and total
 * (inclusive) time of the request path's stages, as shares of all samples.
 * Run: bun bench/profile-summary.ts FILE.cpuprofile
 */
import { readFileSync } from "node:fs";

interface Node { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number; children?: number[] }
const prof = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as { nodes: Node[]; samples: number[]; timeDeltas: number[] };
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const self = new Map<number, number>();
prof.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0)));
const total = [...self.values()].reduce((a, b) => a + b, 0);
const label = (n: Node) => `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.replace(/.*\//, "")}:${n.callFrame.lineNumber + 1}`;

const selfBy = new Map<string, number>();
for (const [id, t] of self) selfBy.set(label(byId.get(id)!), (selfBy.get(label(byId.get(id)!)) ?? 0) + t);
console.log("self time, top 25:");
for (const [k, t] of [...selfBy].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`  ${((t / total) * 100).toFixed(1).padStart(5)}%  ${k}`);

// Inclusive time of named stages: a sample counts once for each stage on its stack.
const stages = (process.argv[3] ?? "handleIngest,authenticate,take,readBody,ingestEvents,validateEvent,parse,store,claim,commit,append,flush,frame,toRecord,problem,json,observe,inc,fetch,handle,serialize").split(",");
const incl = new Map<string, number>();
prof.samples.forEach((id, i) => {
  const seen = new Set<string>();
  for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
    const name = byId.get(n)!.callFrame.functionName;
    if (stages.includes(name) && !seen.has(name)) {
      seen.add(name);
      incl.set(name, (incl.get(name) ?? 0) + (prof.timeDeltas[i] ?? 0));
    }
  }
});
console.log("inclusive time of stages:");
for (const s of stages) if (incl.has(s)) console.log(`  ${((incl.get(s)! / total) * 100).toFixed(1).padStart(5)}%  ${s}`);
