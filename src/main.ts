#!/usr/bin/env -S bun --no-env-file
/** Entry point of `payflux` (source and compiled binary alike). */
import { main } from "./cli.ts";

await main(process.argv.slice(2));
