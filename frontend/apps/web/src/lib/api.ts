/** Client for the backend's unauthenticated endpoints, fetched from the same origin. */

export const API_PREFIX = '/api/v1';

export interface VersionInfo {
  version: string;
  revision: string;
}

export interface HealthResult {
  /** HTTP status of /healthz (0 when the request itself failed). */
  httpStatus: number;
  /** `status` field of the body, or a description of the failure. */
  status: string;
  /** Names (and reasons) of the checks that failed, when the backend reports any. */
  failures: string[];
  /** Parsed body, when it was JSON. */
  body: unknown;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (typeof value === 'string') return value;
  if (isRecord(value)) {
    const detail = value.error ?? value.detail ?? value.message ?? value.status;
    if (typeof detail === 'string') return detail;
  }
  return JSON.stringify(value);
}

const OK_WORDS = new Set(['ok', 'up', 'pass', 'healthy', 'true']);

function isOk(value: unknown): boolean {
  if (value === true) return true;
  if (typeof value === 'string') return OK_WORDS.has(value.toLowerCase());
  if (isRecord(value)) {
    if (value.ok === true || value.healthy === true) return true;
    if (typeof value.status === 'string') return OK_WORDS.has(value.status.toLowerCase());
  }
  return false;
}

/**
 * Pulls the failed checks out of a health body. Accepts the shapes backends commonly use:
 * `{failed: [...]}`, `{errors: [...]}`, `{checks: {name: "ok" | "error text" | {status, error}}}`
 * or `{checks: [{name, status, error}]}`.
 */
export function failuresOf(body: unknown): string[] {
  if (!isRecord(body)) return [];
  const out: string[] = [];
  for (const key of ['failed', 'failures', 'errors']) {
    const list = body[key];
    if (Array.isArray(list)) out.push(...list.map(describe));
    else if (isRecord(list)) for (const [k, v] of Object.entries(list)) out.push(`${k}: ${describe(v)}`);
  }
  const checks = body.checks;
  if (isRecord(checks)) {
    for (const [name, value] of Object.entries(checks)) {
      if (!isOk(value)) out.push(`${name}: ${describe(value)}`);
    }
  } else if (Array.isArray(checks)) {
    for (const item of checks) {
      if (!isOk(item)) {
        const name = isRecord(item) && typeof item.name === 'string' ? item.name : 'check';
        out.push(`${name}: ${describe(item)}`);
      }
    }
  }
  return [...new Set(out)];
}

async function readBody(res: Response): Promise<unknown> {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export async function fetchHealth(fetchFn: typeof fetch = fetch): Promise<HealthResult> {
  let res: Response;
  try {
    res = await fetchFn(`${API_PREFIX}/healthz`, { headers: { accept: 'application/json' }, cache: 'no-store' });
  } catch (err) {
    return { httpStatus: 0, status: `unreachable (${String(err)})`, failures: [], body: null };
  }
  const body = await readBody(res);
  const status =
    isRecord(body) && typeof body.status === 'string'
      ? body.status
      : res.ok
        ? 'ok'
        : `HTTP ${res.status} ${res.statusText}`.trim();
  return { httpStatus: res.status, status, failures: failuresOf(body), body };
}

export async function fetchVersion(fetchFn: typeof fetch = fetch): Promise<VersionInfo> {
  const res = await fetchFn(`${API_PREFIX}/version`, { headers: { accept: 'application/json' }, cache: 'no-store' });
  if (!res.ok) throw new Error(`HTTP ${res.status} ${res.statusText}`.trim());
  const body = await readBody(res);
  if (!isRecord(body) || typeof body.version !== 'string') {
    throw new Error('unexpected /version response');
  }
  return { version: body.version, revision: typeof body.revision === 'string' ? body.revision : 'unknown' };
}
