/**
 * BLAKE3 for stream integrity: `hash-wasm`'s WebAssembly build (about twenty times faster
 * than JavaScript here), falling back to @noble/hashes where WebAssembly is unavailable
 * (say, a page whose Content-Security-Policy forbids it).
 * @module
 */

import { blake3 } from "@noble/hashes/blake3.js";
import { createBLAKE3 } from "hash-wasm";

/** An incremental BLAKE3 hash (32-byte digest). */
export interface Hasher {
  /** Adds bytes. */
  update(data: Uint8Array): void;
  /** The hash of everything added. */
  digest(): Uint8Array;
}

/** A fresh hasher. */
export async function createHasher(): Promise<Hasher> {
  try {
    const h = await createBLAKE3();
    h.init();
    return {
      update: (data) => void h.update(data),
      digest: () => h.digest("binary"),
    };
  } catch {
    const h = blake3.create();
    return {
      update: (data) => void h.update(data),
      digest: () => h.digest(),
    };
  }
}
