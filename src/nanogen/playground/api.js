// The public API, as any client calls it: Bearer key, JSON bodies, the {error, errorCode} envelope.

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(body.error || `HTTP ${status}`);
    this.status = status; // 0: the server could not be reached
    this.code = body.errorCode || "";
    this.body = body;
    this.retryAfter = Number(retryAfter) || Number(body.retryAfter) || 0;
  }
}

export class Api {
  constructor(base, getKey) {
    this.base = base; // the server's root, e.g. new URL("..", location.href)
    this.getKey = getKey;
  }

  async call(method, path, body, contentType = "application/json") {
    const headers = { Authorization: `Bearer ${this.getKey()}` };
    if (body !== undefined) headers["Content-Type"] = contentType;
    const payload = body === undefined || contentType !== "application/json" ? body : JSON.stringify(body);
    let response;
    try {
      response = await fetch(new URL(path, this.base), { method, headers, body: payload, cache: "no-store" });
    } catch {
      throw new ApiError(0, { error: "Cannot reach the nanogen server", errorCode: "NETWORK_ERROR" });
    }
    let data = {};
    try {
      data = await response.json();
    } catch {
      // a proxy's HTML error page, say: keep the status
    }
    if (!response.ok) throw new ApiError(response.status, data || {}, response.headers.get("Retry-After"));
    return data;
  }

  account() { return this.call("GET", "api/account"); }
  generateImage(body) { return this.call("POST", "api/nano-banana-2/generate", body); }
  imageStatus(generationId) { return this.call("POST", "api/nano-banana-2/check-status", { generationId }); }
  generateVideo(body) { return this.call("POST", "api/veo-3/generate", body); }
  videoStatus(taskIds, resolution) { return this.call("POST", "api/veo-3/check-status", { taskIds, resolution }); }
  cancel(generationId) { return this.call("POST", `api/generations/${encodeURIComponent(generationId)}/cancel`, {}); }
  async upload(file) {
    try {
      return await this.call("POST", "api/uploads", file, file.type || "application/octet-stream");
    } catch (err) {
      if (err instanceof ApiError) err.context = `Uploading ${file.name} failed`;
      throw err;
    }
  }
}

// A sentence for a person: what happened and what to do about it.
export function describeError(err, balance) {
  if (!(err instanceof ApiError)) return `Something went wrong in the page: ${err.message || err}`;
  const b = err.body;
  switch (err.code || err.status) {
    case "NETWORK_ERROR":
      return "Cannot reach the nanogen server. Is it still running?";
    case "LOGIN_REQUIRED":
    case 401:
      return "This API key was not accepted (401 LOGIN_REQUIRED): it is unknown, revoked or mistyped. " +
        "Check it, or create one with “nanogen keys create”.";
    case "INSUFFICIENT_CREDITS":
    case 402: {
      const have = balance == null ? "" : ` and the account has ${balance.toLocaleString()}`;
      const need = b.requiredCredits == null ? "more credits" : `${b.requiredCredits.toLocaleString()} credits`;
      return `Not enough credits (402 INSUFFICIENT_CREDITS): this request needs ${need}${have}. ` +
        "Nothing was charged. Ask the server's admin for more (“nanogen credits grant”).";
    }
    case "API_KEY_RATE_LIMIT_EXCEEDED":
    case 429:
      return `Rate limit reached (429): try again in ${err.retryAfter || "a few"} seconds.`;
    default: {
      const where = b.field ? ` (${b.field})` : b.url ? ` (${b.url})` : "";
      const code = err.code ? ` ${err.code}` : "";
      const context = err.context ? `${err.context}: ` : "";
      return `${context}${b.error || "Request failed"}${where} [${err.status}${code}]`;
    }
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

// Poll `check` every `seconds` (the pages' intervals) until `isDone(answer)`. Honours Retry-After on
// 429 and backs off while the server is unreachable or failing (5xx); other errors (401, 404...) end it.
export async function poll(check, { seconds, isDone, onUpdate, onTrouble, signal }) {
  let delay = seconds;
  for (let failures = 0; !signal?.aborted;) {
    await sleep(delay * 1000, signal);
    if (signal?.aborted) break;
    try {
      const answer = await check();
      failures = 0;
      delay = seconds;
      onUpdate(answer);
      if (isDone(answer)) return answer;
    } catch (err) {
      const transient = err instanceof ApiError && (err.status === 0 || err.status === 429 || err.status >= 500);
      if (!transient) throw err;
      failures += 1;
      delay = err.retryAfter || Math.min(60, seconds * 2 ** Math.min(failures, 4));
      onTrouble?.(err, delay);
    }
  }
  return null;
}
