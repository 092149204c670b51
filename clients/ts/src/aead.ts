/**
 * AES-256-GCM for the record layer: WebCrypto (`crypto.subtle`, native and fast) where the
 * platform has it, else @noble/ciphers (pure JavaScript; browsers on plain-http pages other
 * than localhost have no `crypto.subtle`).
 * @module
 */

import { gcm } from "@noble/ciphers/aes.js";

/** One AES-256-GCM key. Output and input of `seal`/`open` are ciphertext followed by the 16-byte tag. */
export interface Aead {
  /** Encrypts `plaintext` under `nonce` (12 bytes), authenticating `ad`. */
  seal(nonce: Uint8Array, ad: Uint8Array, plaintext: Uint8Array): Promise<Uint8Array>;
  /** Decrypts and checks; rejects if authentication fails. */
  open(nonce: Uint8Array, ad: Uint8Array, sealed: Uint8Array): Promise<Uint8Array>;
}

/** Which implementation {@link makeAead} uses: `"webcrypto"` or `"noble"`. */
export type AeadProvider = "webcrypto" | "noble";

/** The provider available here ({@link makeAead}'s default). */
export function defaultProvider(): AeadProvider {
  return globalThis.crypto?.subtle ? "webcrypto" : "noble";
}

/** An AES-256-GCM key from its 32 raw bytes. */
export async function makeAead(key: Uint8Array, provider = defaultProvider()): Promise<Aead> {
  if (provider === "webcrypto") {
    const subtle = globalThis.crypto.subtle;
    const k = await subtle.importKey("raw", key as BufferSource, "AES-GCM", false, [
      "encrypt",
      "decrypt",
    ]);
    return {
      async seal(nonce, ad, plaintext) {
        const alg = { name: "AES-GCM", iv: nonce as BufferSource, additionalData: ad as BufferSource };
        return new Uint8Array(await subtle.encrypt(alg, k, plaintext as BufferSource));
      },
      async open(nonce, ad, sealed) {
        const alg = { name: "AES-GCM", iv: nonce as BufferSource, additionalData: ad as BufferSource };
        return new Uint8Array(await subtle.decrypt(alg, k, sealed as BufferSource));
      },
    };
  }
  const raw = Uint8Array.from(key);
  return {
    async seal(nonce, ad, plaintext) {
      return gcm(raw, nonce, ad).encrypt(plaintext);
    },
    async open(nonce, ad, sealed) {
      return gcm(raw, nonce, ad).decrypt(sealed);
    },
  };
}

/** Noise's synchronous AES-GCM for the handshake (three tiny messages): @noble/ciphers. */
export function gcmSeal(key: Uint8Array, nonce: Uint8Array, ad: Uint8Array, pt: Uint8Array): Uint8Array {
  return gcm(key, nonce, ad).encrypt(pt);
}

/** Opens what {@link gcmSeal} sealed; throws if authentication fails. */
export function gcmOpen(key: Uint8Array, nonce: Uint8Array, ad: Uint8Array, ct: Uint8Array): Uint8Array {
  return gcm(key, nonce, ad).decrypt(ct);
}
