// The /home/ page: one "send me a code" flow (POST /register/ signs existing accounts in and creates new ones on
// verify), the code, the profile and logout, against the JSON API on the same origin. Loaded as a file because
// the page's Content-Security-Policy allows no inline script (script-src 'self').
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const CODE_LENGTH = Number($("main").dataset.codeLength) || 6;
  const SERVICE_NAME = $("product").textContent.trim();
  // Device tokens outlive the tab (OWASP's device cookie: a returning device is judged apart from attackers
  // guessing at its address); access and refresh tokens live in this page's memory only, so closing the tab
  // signs out.
  const DEVICE_TOKENS_KEY = "otp-login.device-tokens";
  const state = { address: null, channel: null, access: null, refresh: null };

  // --- what the page shows -----------------------------------------------------------------------------------

  const STEPS = ["step-address", "step-code", "step-profile"];

  function headingFor(step) {
    if (step === "step-code") return state.channel === "sms" ? "Check your phone" : "Check your email";
    if (step === "step-profile") return "Your account";
    return "Sign in or create an account";
  }

  // Shows one step, names it in the heading and the title, and puts the focus where the person goes next: the
  // heading (so a screen reader reads where they are now) unless `focus` names a field.
  function show(step, focus) {
    for (const id of STEPS) $(id).hidden = id !== step;
    const heading = headingFor(step);
    $("heading").textContent = heading;
    document.title = `${SERVICE_NAME}: ${heading.toLowerCase()}`;
    (focus ? $(focus) : $("heading")).focus();
  }

  // The one live region (role="alert"): errors and notices are announced when they appear.
  function say(text, kind) {
    const box = $("message");
    box.className = text ? kind : "";
    box.textContent = text || "";
  }

  function markInvalid(field, invalid) {
    if (invalid) {
      field.setAttribute("aria-invalid", "true");
      field.setAttribute("aria-errormessage", "message");
    } else {
      field.removeAttribute("aria-invalid");
      field.removeAttribute("aria-errormessage");
    }
  }

  function fail(text, field) {
    say(text, "error");
    for (const id of ["address", "code"]) markInvalid($(id), field && field.id === id);
    if (field) field.focus();
  }

  function clearMessage() {
    say("", "");
    markInvalid($("address"), false);
    markInvalid($("code"), false);
  }

  function plural(count, unit) {
    return `${count} ${unit}${count === 1 ? "" : "s"}`;
  }

  // A wait in the units a person reads: "26 seconds", "about 57 minutes", "about 3 hours".
  function humanWait(seconds) {
    if (seconds < 120) return plural(seconds, "second");
    const minutes = Math.round(seconds / 60);
    if (minutes < 60) return (seconds % 60 ? "about " : "") + plural(minutes, "minute");
    const hours = Math.round(seconds / 3600);
    if (hours < 48) return (seconds % 3600 ? "about " : "") + plural(hours, "hour");
    return "about " + plural(Math.round(seconds / 86400), "day");
  }

  // Retry-After is delay-seconds or an HTTP-date (RFC 9110 section 10.2.3); null when absent or unreadable.
  function retryAfterSeconds(response) {
    const value = (response.headers.get("Retry-After") || "").trim();
    if (/^\d+$/.test(value)) return Number(value);
    const when = Date.parse(value);
    return Number.isNaN(when) ? null : Math.max(1, Math.ceil((when - Date.now()) / 1000));
  }

  function explain(response, body) {
    if (response.status === 429) {
      const wait = retryAfterSeconds(response);
      const after = wait ? `Try again in ${humanWait(wait)}.` : "Try again in a little while.";
      if (body && body.code === "sms_budget") {
        return `Text messages cannot be sent right now. ${after} You can use an email address instead.`;
      }
      return `Too many tries for now. ${after}`;
    }
    if (body && body.code === "invalid_code") {
      return "That code is wrong or has expired. Check it, or ask for a new one.";
    }
    if (response.status >= 500) return "The service is having trouble. Try again in a moment.";
    if (body && typeof body === "object") {
      if (typeof body.detail === "string") return body.detail;
      const first = Object.values(body).find((value) => Array.isArray(value) && value.length);
      if (first) return String(first[0]);
    }
    return "Something went wrong. Try again.";
  }

  // --- what people type ----------------------------------------------------------------------------------------

  function addressBody(raw) {
    const value = raw.trim();
    return value.includes("@") ? { email: value } : { mobile: value };
  }

  function addressText(body) {
    return body.email || body.mobile;
  }

  const DIGIT = /^\p{Nd}$/u;
  const SPACER = /^[\p{Zs}\p{Pd}]$/u;  // spaces (no-break, thin, ...) and dashes or hyphens

  // The value of a decimal digit of any script. Unicode encodes every such digit (category Nd) in runs of ten,
  // 0 to 9 in order (Unicode Standard, section 4.6), so the digit's place in its run of Nd code points is its value.
  function digitValue(char) {
    let point = char.codePointAt(0);
    let place = 0;
    while (DIGIT.test(String.fromCodePoint(point - 1))) {
      point -= 1;
      place += 1;
    }
    return place % 10;
  }

  // The code as it was typed, as ASCII digits; null when it is not a code. The same reading as the API's
  // (otp.codes.code_normalize): digits of any script, spaces or dashes between them, nothing else.
  function codeNormalize(typed) {
    const chars = Array.from(typed.trim());
    if (!chars.length || !DIGIT.test(chars[0]) || !DIGIT.test(chars[chars.length - 1])) return null;
    let digits = "";
    for (const char of chars) {
      if (DIGIT.test(char)) digits += String(digitValue(char));
      else if (!SPACER.test(char)) return null;
    }
    return digits.length === CODE_LENGTH ? digits : null;
  }

  // --- device tokens, one per address ------------------------------------------------------------------------

  function addressKey(body) {
    return body.email ? `email:${body.email.toLowerCase()}` : `mobile:${body.mobile.replace(/[^\p{Nd}+]/gu, "")}`;
  }

  function deviceTokens() {
    try {
      const stored = JSON.parse(window.localStorage.getItem(DEVICE_TOKENS_KEY) || "{}");
      return stored && typeof stored === "object" ? stored : {};
    } catch (_) {
      return {};  // storage disabled or unreadable: the page works, as a new device
    }
  }

  function deviceTokenSave(body, token) {
    const tokens = deviceTokens();
    if (token) tokens[addressKey(body)] = token;
    else delete tokens[addressKey(body)];
    try { window.localStorage.setItem(DEVICE_TOKENS_KEY, JSON.stringify(tokens)); } catch (_) { /* as above */ }
  }

  function withDeviceToken(body) {
    const token = deviceTokens()[addressKey(body)];
    return token ? { ...body, device_token: token } : { ...body };
  }

  // --- talking to the API --------------------------------------------------------------------------------------

  async function call(path, { method = "POST", body, token } = {}) {
    const headers = { "Accept": "application/json" };
    if (body) headers["Content-Type"] = "application/json";
    if (token) headers["Authorization"] = `Bearer ${token}`;
    const response = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined,
                                         credentials: "same-origin", cache: "no-store" });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    return { response, data };
  }

  async function busy(button, work) {
    button.disabled = true;
    try {
      await work();
    } catch (_) {
      say("The service cannot be reached. Check your connection and try again.", "error");
    } finally {
      button.disabled = false;
      // A disabled button loses the focus; give it back when the work moved it nowhere else.
      const lost = !document.activeElement || document.activeElement === document.body;
      if (lost && button.offsetParent !== null) button.focus();
    }
  }

  // A refresh token works once: a second use, even a concurrent one, signs the whole sign-in out (the server
  // cannot tell it from a thief's, RFC 9700 section 4.14.2). So every caller that finds its access token expired
  // shares the one refresh in flight, and a caller whose token was already replaced just retries with the new one.
  let refreshing = null;

  function refreshTokens() {
    if (!refreshing) {
      refreshing = (async () => {
        const { response, data } = await call("/token/refresh/", { body: { refresh: state.refresh } });
        if (response.status !== 200) return { ok: false, response, data };
        state.access = data.access;
        state.refresh = data.refresh;
        return { ok: true };
      })().finally(() => { refreshing = null; });
    }
    return refreshing;
  }

  // A call with the access token; on 401, one shared refresh, then the call again.
  async function authorized(path, options = {}) {
    const used = state.access;
    const result = await call(path, { ...options, token: used });
    if (result.response.status !== 401 || !state.refresh) return result;
    if (state.access === used) {
      const renewed = await refreshTokens();
      if (!renewed.ok) {
        if (renewed.response.status === 401) signedOut("Your sign-in has expired or was ended. Sign in again.");
        return { response: renewed.response, data: renewed.data, handled: renewed.response.status === 401 };
      }
    }
    return call(path, { ...options, token: state.access });
  }

  // --- the flow ------------------------------------------------------------------------------------------------

  function sentTo(body, expiresIn) {
    const minutes = Math.floor(expiresIn / 60);
    const lasts = expiresIn % 60 === 0 && minutes >= 1 ? plural(minutes, "minute") : humanWait(expiresIn);
    return `A code is on its way to ${addressText(body)}. It works for ${lasts}; ` +
           `type it below, with or without spaces.`;
  }

  async function sendCode(body) {
    const { response, data } = await call("/register/", { body: withDeviceToken(body) });
    if (response.status !== 202) return { ok: false, text: explain(response, data) };
    state.address = body;
    state.channel = data.channel;
    $("sent-to").textContent = sentTo(body, data.expires_in);
    return { ok: true };
  }

  $("address-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const raw = $("address").value;
    if (!raw.trim()) return fail("Enter your email address or mobile number.", $("address"));
    busy($("send-code"), async () => {
      const sent = await sendCode(addressBody(raw));
      if (!sent.ok) return fail(sent.text, $("address"));
      clearMessage();
      $("code").value = "";
      show("step-code", "code");
    });
  });

  $("resend").addEventListener("click", () => {
    busy($("resend"), async () => {
      const sent = await sendCode(state.address);
      if (!sent.ok) return fail(sent.text, $("code"));
      markInvalid($("code"), false);
      $("code").value = "";
      say("A new code is on its way. Codes sent before it no longer work.", "info");
      $("code").focus();
    });
  });

  $("start-over").addEventListener("click", () => {
    clearMessage();
    $("code").value = "";
    show("step-address", "address");
  });

  $("code-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const code = codeNormalize($("code").value);
    if (code === null) {
      return fail(`Enter the ${CODE_LENGTH}-digit code from the message. Spaces and dashes between the digits are fine.`,
                  $("code"));
    }
    busy($("verify"), async () => {
      const { response, data } = await call("/verify-otp/", { body: { ...withDeviceToken(state.address), code } });
      if (response.status !== 200) return fail(explain(response, data), $("code"));
      if (data.device_token) deviceTokenSave(state.address, data.device_token);
      state.access = data.access;
      state.refresh = data.refresh;
      $("code").value = "";
      clearMessage();
      await loadProfile();
    });
  });

  function signedOut(text) {
    state.access = state.refresh = null;
    $("code").value = "";
    show("step-address");
    say(text, "info");
  }

  async function loadProfile() {
    const { response, data, handled } = await authorized("/profile/", { method: "GET" });
    if (handled) return;
    if (response.status !== 200) return say(explain(response, data), "error");
    $("profile-email").textContent = data.email || "—";
    $("profile-mobile").textContent = data.mobile || "—";
    $("profile-joined").textContent = new Date(data.date_joined).toLocaleString();
    $("profile-last-login").textContent = data.last_login ? new Date(data.last_login).toLocaleString() : "—";
    if ($("step-profile").hidden) show("step-profile");
  }

  $("reload-profile").addEventListener("click", () => busy($("reload-profile"), async () => {
    clearMessage();
    await loadProfile();
  }));

  // The refresh token alone is the credential (no access token, which may have expired); the device token sent
  // along is revoked with it. "Logged out" is said only when the server confirmed it; otherwise the page keeps
  // the tokens, so the person can try again.
  $("logout").addEventListener("click", () => {
    busy($("logout"), async () => {
      if (refreshing) await refreshing;  // log out with the newest token, not one a refresh is replacing
      const device = deviceTokens()[addressKey(state.address)];
      const body = device ? { refresh: state.refresh, device_token: device } : { refresh: state.refresh };
      const { response, data } = await call("/logout/", { body });
      if (response.status === 205 || response.status === 401) deviceTokenSave(state.address, null);
      if (response.status === 205) return signedOut("You are logged out.");
      if (response.status === 401) {
        return signedOut("The server did not recognise this sign-in, so there was nothing to log out. " +
                         "This page has forgotten it.");
      }
      say(`You are still signed in: ${explain(response, data)}`, "error");
    });
  });
})();
