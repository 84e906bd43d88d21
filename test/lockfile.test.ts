/**
 * `npm ci` (the README's first command) refuses a lock file whose packages
 * name optional dependencies it does not contain. The registry this project
 * installs from carries only the linux-x64 build of Deno, so after an
 * `npm install` re-adds the other platforms to the `deno` entry, remove them
 * from "node_modules/deno".optionalDependencies in package-lock.json again.
 */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./support/harness.ts";

test("every optional dependency the lock file names is in the lock file (npm ci would fail otherwise)", () => {
  const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8")) as { packages: Record<string, { optionalDependencies?: Record<string, string> }> };
  const missing: string[] = [];
  for (const [path, pkg] of Object.entries(lock.packages)) {
    for (const dep of Object.keys(pkg.optionalDependencies ?? {})) {
      if (!(`node_modules/${dep}` in lock.packages)) missing.push(`${path || "(root)"} -> ${dep}`);
    }
  }
  expect(missing).toEqual([]);
});
