/**
 * Parser for systemd's EnvironmentFile syntax, so that one file serves both
 * `systemd` and `payflux --config FILE`:
 *   KEY=VALUE, blank lines, lines starting with # or ; are comments,
 *   values may be wrapped in "double" (backslash escapes) or 'single' quotes,
 *   a trailing backslash continues an unquoted value on the next line.
 */
export interface EnvFileResult {
  values: Record<string, string>;
  /** Problems with line numbers; never includes a value (it may be a secret). */
  errors: string[];
}

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function parseEnvFile(text: string, fileName: string): EnvFileResult {
  const values: Record<string, string> = {};
  const errors: string[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1;
    let line = (lines[i] ?? "").trimStart();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const eq = line.indexOf("=");
    // No message quotes the line, a name or a value: a key wrapped onto a line
    // of its own (base64 ends in `=`) would otherwise be printed.
    if (eq < 0) {
      errors.push(`${fileName}:${lineNo}: expected KEY=VALUE, found a line without "=" (a value wrapped onto its own line? join it to its line)`);
      continue;
    }
    const key = line.slice(0, eq).trim();
    if (!KEY.test(key)) {
      errors.push(`${fileName}:${lineNo}: the text before "=" is not a variable name (letters, digits and _, not starting with a digit; a value wrapped onto its own line?)`);
      continue;
    }
    let rest = line.slice(eq + 1).trimStart();
    const quote = rest[0];
    if (quote === '"' || quote === "'") {
      // A quoted value may span lines until its closing quote.
      let value = "";
      let pos = 1;
      let closed = false;
      for (;;) {
        while (pos < rest.length) {
          const ch = rest[pos]!;
          if (quote === '"' && ch === "\\" && pos + 1 < rest.length) {
            const next = rest[pos + 1]!;
            value += next === "n" ? "\n" : next;
            pos += 2;
            continue;
          }
          if (ch === quote) {
            closed = true;
            break;
          }
          value += ch;
          pos++;
        }
        if (closed || i + 1 >= lines.length) break;
        value += "\n";
        rest = lines[++i] ?? "";
        pos = 0;
      }
      if (!closed) {
        errors.push(`${fileName}:${lineNo}: the value has an unterminated ${quote === '"' ? "double" : "single"} quote`);
        continue;
      }
      const trailing = rest.slice(pos + 1).trim();
      if (trailing !== "" && !trailing.startsWith("#")) {
        errors.push(`${fileName}:${lineNo}: the value has text after its closing quote`);
        continue;
      }
      values[key] = value;
      continue;
    }
    let value = rest.trimEnd();
    while (value.endsWith("\\") && i + 1 < lines.length) {
      value = value.slice(0, -1) + (lines[++i] ?? "").trim();
    }
    values[key] = value;
  }
  return { values, errors };
}
