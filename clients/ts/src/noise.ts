/**
 * The initiator side of `Noise_XX_25519_AESGCM_SHA256` (Noise Protocol Framework rev. 34)
 * with empty payloads, as zserver runs it (PROTOCOL.md section 2b):
 *
 * ```text
 * -> e
 * <- e, ee, s, es
 * -> s, se
 * ```
 *
 * Primitives: X25519 from @noble/curves, SHA-256 and HMAC from @noble/hashes, AES-256-GCM
 * from @noble/ciphers. Inside the handshake Noise's AESGCM nonce is 4 zero bytes and the
 * counter **big-endian** (the record layer after it uses little-endian; section 2b).
 * @module
 */

import { x25519 } from "@noble/curves/ed25519.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 } from "@noble/hashes/sha2.js";

import { gcmOpen, gcmSeal } from "./aead.js";
import { ZserverError } from "./errors.js";

const PROTOCOL_NAME = new TextEncoder().encode("Noise_XX_25519_AESGCM_SHA256");
const DHLEN = 32;
const TAGLEN = 16;

/** An X25519 key pair (the client's static identity for one or more connections). */
export interface Keypair {
  /** 32-byte private key. */
  privateKey: Uint8Array;
  /** 32-byte public key. */
  publicKey: Uint8Array;
}

/** A fresh X25519 key pair. */
export function generateKeypair(): Keypair {
  const privateKey = x25519.utils.randomSecretKey();
  return { privateKey, publicKey: x25519.getPublicKey(privateKey) };
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Noise's HKDF with two outputs. */
function hkdf2(ck: Uint8Array, ikm: Uint8Array): [Uint8Array, Uint8Array] {
  const temp = hmac(sha256, ck, ikm);
  const out1 = hmac(sha256, temp, Uint8Array.of(1));
  const out2 = hmac(sha256, temp, concat(out1, Uint8Array.of(2)));
  return [out1, out2];
}

function handshakeNonce(n: number): Uint8Array {
  const nonce = new Uint8Array(12);
  new DataView(nonce.buffer).setBigUint64(4, BigInt(n), false);
  return nonce;
}

/** Noise's SymmetricState with its CipherState, for the handshake only. */
class SymmetricState {
  private h: Uint8Array;
  private ck: Uint8Array;
  private k: Uint8Array | undefined;
  private n = 0;

  constructor(prologue: Uint8Array) {
    const h = new Uint8Array(32);
    h.set(PROTOCOL_NAME); // the name is shorter than HASHLEN: zero-padded
    this.h = h;
    this.ck = h.slice();
    this.mixHash(prologue);
  }

  /** The handshake hash. */
  get hash(): Uint8Array {
    return this.h;
  }

  mixHash(data: Uint8Array): void {
    this.h = sha256(concat(this.h, data));
  }

  mixKey(ikm: Uint8Array): void {
    const [ck, k] = hkdf2(this.ck, ikm);
    this.ck = ck;
    this.k = k;
    this.n = 0;
  }

  encryptAndHash(plaintext: Uint8Array): Uint8Array {
    const out = this.k ? gcmSeal(this.k, handshakeNonce(this.n++), this.h, plaintext) : plaintext;
    this.mixHash(out);
    return out;
  }

  decryptAndHash(ciphertext: Uint8Array): Uint8Array {
    let out = ciphertext;
    if (this.k) {
      try {
        out = gcmOpen(this.k, handshakeNonce(this.n++), this.h, ciphertext);
      } catch {
        throw new ZserverError("handshake", "handshake message failed authentication");
      }
    }
    this.mixHash(ciphertext);
    return out;
  }

  split(): [Uint8Array, Uint8Array] {
    return hkdf2(this.ck, new Uint8Array(0));
  }
}

/** What a finished handshake gives. */
export interface HandshakeResult {
  /** Key for client → server records. */
  sendKey: Uint8Array;
  /** Key for server → client records. */
  recvKey: Uint8Array;
  /** The server's static public key. */
  serverKey: Uint8Array;
  /** The handshake hash. */
  hash: Uint8Array;
}

/** The initiator's three steps; the caller moves the messages (u16-LE length framed). */
export class NoiseInitiator {
  private readonly ss: SymmetricState;
  private readonly e = generateKeypair();
  private re: Uint8Array | undefined;
  private rs: Uint8Array | undefined;

  /** @param s this side's static key pair; @param prologue both preambles (and codec lists). */
  constructor(
    private readonly s: Keypair,
    prologue: Uint8Array,
  ) {
    this.ss = new SymmetricState(prologue);
  }

  /** Message 1: `e` (32 bytes). */
  writeMessage1(): Uint8Array {
    this.ss.mixHash(this.e.publicKey);
    const payload = this.ss.encryptAndHash(new Uint8Array(0));
    return concat(this.e.publicKey, payload);
  }

  /** Reads message 2 (`e, ee, s, es`) and returns the server's static key. */
  readMessage2(msg: Uint8Array): Uint8Array {
    if (msg.length < DHLEN + DHLEN + TAGLEN + TAGLEN) {
      throw new ZserverError("handshake", `handshake message 2 of ${msg.length} bytes is too short`);
    }
    const re = msg.subarray(0, DHLEN);
    this.re = re.slice();
    this.ss.mixHash(re);
    this.ss.mixKey(this.dh(this.e.privateKey, re));
    const rs = this.ss.decryptAndHash(msg.subarray(DHLEN, 2 * DHLEN + TAGLEN));
    this.rs = rs.slice();
    this.ss.mixKey(this.dh(this.e.privateKey, rs));
    this.ss.decryptAndHash(msg.subarray(2 * DHLEN + TAGLEN)); // the (empty) payload
    return this.rs;
  }

  /** Message 3 (`s, se`) and the transport keys. */
  writeMessage3(): { message: Uint8Array; result: HandshakeResult } {
    if (!this.re || !this.rs) throw new ZserverError("handshake", "message 2 was not read");
    const s = this.ss.encryptAndHash(this.s.publicKey);
    this.ss.mixKey(this.dh(this.s.privateKey, this.re));
    const payload = this.ss.encryptAndHash(new Uint8Array(0));
    const [sendKey, recvKey] = this.ss.split();
    return {
      message: concat(s, payload),
      result: { sendKey, recvKey, serverKey: this.rs, hash: this.ss.hash },
    };
  }

  private dh(priv: Uint8Array, pub: Uint8Array): Uint8Array {
    try {
      return x25519.getSharedSecret(priv, pub);
    } catch (e) {
      throw new ZserverError("handshake", `bad X25519 key from the server: ${e}`);
    }
  }
}
