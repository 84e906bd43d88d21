import pkg from "../package.json" with { type: "json" };

export const VERSION: string = pkg.version;

/** Which JavaScript runtime runs this process ("bun" or "deno"); a build_info label. */
export const RUNTIME: string = "Deno" in globalThis ? "deno" : "bun";
