/** Deterministic test data: xorshift32 uniforms in [-scale, scale), the same stream for the same seed everywhere. */
export function rand(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 2 ** 32 * 2 - 1) * scale;
  }
  return out;
}
