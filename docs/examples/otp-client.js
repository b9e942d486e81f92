// A browser client of the OTP login API with `fetch`: send a code, verify it, call protected routes with the
// access token, refresh it one at a time, log out. An ES module with no dependencies:
//
//   import { OtpClient } from "./otp-client.js";
//   const client = new OtpClient({ onSignedOut: () => showSignIn() });
//   await client.sendCode("alice@example.com");            // 202: a code is on its way
//   await client.verify("alice@example.com", "123 456");   // tokens kept by the client
//   const me = await client.json("/profile/");             // refreshed for you when the access token expired
//   await client.logout();
//
// Same origin by default: serve the page from the API's host (as /home/ is), or list the page's origin in the
// service's CORS_ALLOWED_ORIGINS and pass `baseUrl`. Tokens are kept in memory only: a script injected into the
// page could read anything in localStorage, and a refresh token there outlives the tab. A reload signs out;
// pass `storage: sessionStorage` to keep the sign-in for the tab's life instead.
//
// The rule this client exists for: refresh tokens rotate and are single-use (RFC 9700 section 4.14.2). A refresh
// answers a new access AND a new refresh token and kills the old refresh token; of two refreshes sent with one
// token only one succeeds, and sending an already-rotated token again revokes the whole sign-in. So however many
// calls meet an expired access token at once, exactly one refresh is sent, and every call waits for it.

const JSON_HEADERS = { "Content-Type": "application/json", Accept: "application/json" };
const TOKENS_KEY = "otp-client.tokens";

/** An answer of the API other than the one hoped for: `status`, and the body's `code` and `detail`. */
export class OtpError extends Error {
  constructor(status, body, retryAfter) {
    const detail = (body && body.detail) || (body ? JSON.stringify(body) : `HTTP ${status}`);
    super(detail);
    this.name = "OtpError";
    this.status = status;
    this.code = (body && body.code) || (status === 400 ? "invalid" : "error");
    this.body = body; // field errors (400) come as {"email": ["..."]}
    this.retryAfter = retryAfter; // seconds, on a 429 or 503
  }
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // a proxy's page that is not JSON: keep the status alone
  }
  const retryAfter = Number(response.headers.get("Retry-After")) || null;
  return new OtpError(response.status, body, retryAfter);
}

function addressBody(address) {
  // A mobile starts with + (E.164) or is all digits and separators; anything else is an email.
  return /^\+|^[\d\s().-]+$/.test(address.trim()) ? { mobile: address } : { email: address };
}

export class OtpClient {
  #baseUrl;
  #storage;
  #onSignedOut;
  #tokens = null; // {access, refresh}
  #deviceTokens = new Map(); // address -> device token (OWASP's device cookie: its own throttles, no lockout)
  #refreshing = null; // the refresh in flight, shared by every call that needs it

  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] the API's origin, "" (default) for the page's own
   * @param {Storage} [options.storage] where to keep the tokens beyond memory (sessionStorage), or none
   * @param {() => void} [options.onSignedOut] called once the sign-in is over: logout, or a refresh refused
   */
  constructor({ baseUrl = "", storage = null, onSignedOut = () => {} } = {}) {
    this.#baseUrl = baseUrl.replace(/\/$/, "");
    this.#storage = storage;
    this.#onSignedOut = onSignedOut;
    const kept = storage && storage.getItem(TOKENS_KEY);
    this.#tokens = kept ? JSON.parse(kept) : null;
  }

  get signedIn() {
    return this.#tokens !== null;
  }

  /** The tokens held now, {access, refresh}, or null (for a test, or to hand to another part of the app). */
  get tokens() {
    return this.#tokens && { ...this.#tokens };
  }

  set tokens(tokens) {
    this.#tokens = tokens ? { access: tokens.access, refresh: tokens.refresh } : null;
    if (this.#storage) {
      if (this.#tokens) this.#storage.setItem(TOKENS_KEY, JSON.stringify(this.#tokens));
      else this.#storage.removeItem(TOKENS_KEY);
    }
  }

  async #post(path, body) {
    return fetch(this.#baseUrl + path, { method: "POST", headers: JSON_HEADERS, body: JSON.stringify(body) });
  }

  /**
   * Ask for a code (POST /register/: it signs existing accounts in and creates new ones on verify).
   * @returns {Promise<{detail: string, channel: "email"|"sms", expires_in: number}>}
   * @throws {OtpError} 400 (a field error, or code "number_not_allowed"), 429 with retryAfter seconds
   */
  async sendCode(address) {
    const body = { ...addressBody(address) };
    const device = this.#deviceTokens.get(address);
    if (device) body.device_token = device;
    const response = await this.#post("/register/", body);
    if (response.status !== 202) throw await errorFrom(response);
    return response.json();
  }

  /**
   * Trade the code for tokens (POST /verify-otp/). The code may be typed with spaces or dashes.
   * @throws {OtpError} 400 with code "invalid_code" (wrong, expired or used: the API does not say which), 429
   */
  async verify(address, code) {
    const body = { ...addressBody(address), code };
    const device = this.#deviceTokens.get(address);
    if (device) body.device_token = device;
    const response = await this.#post("/verify-otp/", body);
    if (response.status !== 200) throw await errorFrom(response);
    const answer = await response.json();
    this.tokens = answer;
    if (answer.device_token) this.#deviceTokens.set(address, answer.device_token);
    return answer;
  }

  /**
   * `fetch` with the access token. A 401 means the access token expired (or was revoked): the client refreshes
   * once, for every call waiting, then repeats the call with the new token. A second 401 is returned as it is.
   * @returns {Promise<Response>}
   * @throws {OtpError} 401 "not_signed_in" when there is no sign-in, or once the refresh was refused
   */
  async fetch(path, init = {}) {
    const used = this.#tokens && this.#tokens.access;
    if (!used) throw new OtpError(401, { detail: "Not signed in.", code: "not_signed_in" });
    const response = await fetch(this.#baseUrl + path, this.#withAccess(init, used));
    if (response.status !== 401) return response;
    await this.#refreshAfter(used);
    if (!this.#tokens) throw new OtpError(401, { detail: "Not signed in.", code: "not_signed_in" }); // logged out meanwhile
    return fetch(this.#baseUrl + path, this.#withAccess(init, this.#tokens.access));
  }

  /** `fetch` with the access token, then the JSON body; throws OtpError for any status but 2xx. */
  async json(path, init = {}) {
    const response = await this.fetch(path, init);
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }

  #withAccess(init, access) {
    const headers = new Headers(init.headers || {});
    headers.set("Authorization", `Bearer ${access}`);
    headers.set("Accept", "application/json");
    return { ...init, headers };
  }

  // After a 401 to a call sent with `used`: refresh, unless another call already did since that call was sent
  // (the token held now is newer), or join the refresh already in flight.
  async #refreshAfter(used) {
    if (this.#tokens && this.#tokens.access !== used) return;
    if (!this.#refreshing) {
      this.#refreshing = this.#refresh().finally(() => {
        this.#refreshing = null;
      });
    }
    await this.#refreshing;
  }

  async #refresh() {
    const refresh = this.#tokens && this.#tokens.refresh;
    if (!refresh) throw new OtpError(401, { detail: "Not signed in.", code: "not_signed_in" });
    const response = await this.#post("/token/refresh/", { refresh });
    if (response.status === 200) {
      this.tokens = await response.json(); // the new access AND the new refresh token
      return;
    }
    const error = await errorFrom(response);
    if (response.status === 401) this.#signedOut(); // expired, revoked, or the account is gone: sign in again
    throw error; // 429 or 503: still signed in, the caller may try again later
  }

  /**
   * Log out (POST /logout/ with the refresh token alone: no access token needed). Only a 205 (or a 401: the
   * token was not genuine anyway) ends the sign-in here; on a 5xx or a network error the client stays signed
   * in and throws, so the page never says "logged out" while the refresh token still works.
   * @param {{forgetDevice?: boolean}} [options] forgetDevice also revokes this address's device token
   */
  async logout({ forgetDevice = false, address = null } = {}) {
    if (this.#refreshing) await this.#refreshing.catch(() => {}); // log out the newest refresh token
    const refresh = this.#tokens && this.#tokens.refresh;
    if (!refresh) return;
    const body = { refresh };
    if (forgetDevice && address && this.#deviceTokens.has(address)) body.device_token = this.#deviceTokens.get(address);
    const response = await this.#post("/logout/", body);
    if (response.status !== 205 && response.status !== 401) throw await errorFrom(response);
    if (forgetDevice && address) this.#deviceTokens.delete(address);
    this.#signedOut();
  }

  #signedOut() {
    const was = this.#tokens !== null;
    this.tokens = null;
    if (was) this.#onSignedOut();
  }
}
