/** One source tree, two runtimes: the runtime-specific code stays in one module, and the scripts and README agree. */
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { DENO_PERMISSIONS, ROOT } from "./support/harness.ts";

const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { scripts: Record<string, string>; devDependencies: Record<string, string> };
const readme = readFileSync(join(ROOT, "README.md"), "utf8");

test("only src/runtime.ts touches Bun or Deno globals", () => {
  const offenders = readdirSync(join(ROOT, "src"))
    .filter((f) => f.endsWith(".ts") && f !== "runtime.ts")
    .filter((f) => /\b(Bun|Deno)\.[a-zA-Z]/.test(readFileSync(join(ROOT, "src", f), "utf8").replace(/\/\/.*|\/\*[\s\S]*?\*\//g, "")));
  expect(offenders).toEqual([]);
});

test("both runtimes are devDependencies, so npm ci brings them", () => {
  expect(Object.keys(pkg.devDependencies)).toEqual(expect.arrayContaining(["bun", "deno"]));
});

test("start:deno grants the permissions the Deno test target runs with, and the README lists each", () => {
  expect(pkg.scripts["start:deno"]).toBe(`deno run ${DENO_PERMISSIONS.join(" ")} --allow-write=./data src/main.ts`);
  expect(pkg.scripts["build:deno"]).toBe(`deno compile ${DENO_PERMISSIONS.join(" ")} --allow-write --output dist/payflux-deno src/main.ts`);
  for (const flag of [...DENO_PERMISSIONS, "--allow-write=./data"]) expect(readme).toContain(`\`${flag}\``);
  for (const script of ["npm start", "npm run start:deno", "npm run build", "npm run build:deno"]) expect(readme).toContain(script);
});
