import { createHash, createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { isAbsolute, join } from "node:path";

/**
 * The HTTPS certificate and key (PAYFLUX_TLS_CERT_FILE, PAYFLUX_TLS_KEY_FILE),
 * read and checked by the config loader at start-up, by `check-config` and
 * on every SIGHUP. Messages name the variable and the file, never the key.
 */
export interface TlsMaterial {
  certFile: string;
  keyFile: string;
  /** PEM: the certificate, then its chain as the file holds it. */
  cert: string;
  /** PEM private key: never logged, printed or hashed into the fingerprint. */
  key: string;
  subject: string;
  /** e.g. "DNS:example.com, IP Address:127.0.0.1" ("" when the certificate has none). */
  subjectAltNames: string;
  notAfter: Date;
  /** SHA-256 of the leaf certificate (DER), hex: identifies it in logs and the config fingerprint. */
  sha256: string;
}

/**
 * Reads and checks the pair. Both unset: null (plain HTTP). A relative file
 * name is looked up in `credentialsDir` (systemd's $CREDENTIALS_DIRECTORY,
 * where LoadCredential= puts the key) when there is one.
 */
export function loadTls(certFile: string, keyFile: string, credentialsDir: string | undefined, errors: string[], warnings: string[]): TlsMaterial | null {
  if (certFile === "" && keyFile === "") return null;
  if (certFile === "" || keyFile === "") {
    const [set, unset] = certFile === "" ? ["PAYFLUX_TLS_KEY_FILE", "PAYFLUX_TLS_CERT_FILE"] : ["PAYFLUX_TLS_CERT_FILE", "PAYFLUX_TLS_KEY_FILE"];
    errors.push(`${set} is set but ${unset} is not: set both for HTTPS, or neither for plain HTTP`);
    return null;
  }
  const certPath = resolvePath(certFile, credentialsDir);
  const keyPath = resolvePath(keyFile, credentialsDir);
  const certPem = readPem("PAYFLUX_TLS_CERT_FILE", certPath, errors);
  const keyPem = readPem("PAYFLUX_TLS_KEY_FILE", keyPath, errors);
  if (certPem === null || keyPem === null) return null;

  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch {
    errors.push(`PAYFLUX_TLS_CERT_FILE: ${certPath} holds no PEM certificate`);
    return null;
  }
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(keyPem);
  } catch {
    // The library's message is not repeated: it could quote part of the file.
    errors.push(`PAYFLUX_TLS_KEY_FILE: ${keyPath} holds no unencrypted PEM private key`);
    return null;
  }
  if (!cert.checkPrivateKey(key)) {
    errors.push(`PAYFLUX_TLS_KEY_FILE: the private key in ${keyPath} does not match the certificate in ${certPath} (PAYFLUX_TLS_CERT_FILE)`);
    return null;
  }
  const notAfter = new Date(Date.parse(cert.validTo));
  if (notAfter.getTime() < Date.now()) warnings.push(`PAYFLUX_TLS_CERT_FILE: the certificate in ${certPath} expired on ${notAfter.toISOString()}; clients will refuse it`);
  return {
    certFile: certPath,
    keyFile: keyPath,
    cert: certPem,
    key: keyPem,
    subject: cert.subject.replaceAll("\n", ", "),
    subjectAltNames: cert.subjectAltName ?? "",
    notAfter,
    sha256: createHash("sha256").update(cert.raw).digest("hex"),
  };
}

/** One line for check-config and logs: subject, SANs, expiry. */
export function describeCert(tls: TlsMaterial): string {
  const days = Math.floor((tls.notAfter.getTime() - Date.now()) / 86_400_000);
  return `${tls.subject}; SANs ${tls.subjectAltNames || "(none)"}; expires ${tls.notAfter.toISOString()} (${days >= 0 ? `in ${days} days` : "EXPIRED"})`;
}

function resolvePath(file: string, credentialsDir: string | undefined): string {
  return isAbsolute(file) || credentialsDir === undefined || credentialsDir === "" ? file : join(credentialsDir, file);
}

function readPem(variable: string, path: string, errors: string[]): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    errors.push(`${variable}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? "read failed"}`);
    return null;
  }
}
