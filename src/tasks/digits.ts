/**
 * Schoolbook arithmetic on decimal strings, step by step, producing the worked lines the arithmetic task shows.
 * Strings (not numbers) so any digit count is exact; the task tests recheck every result with BigInt.
 *
 * Line formats (compact on purpose: a few-million-parameter model has to learn to write them):
 *   addition, one line per column from the right:  `7+5=12 -> 2 c1`, then `4+8+1=13 -> 32 c1`, ...
 *     the text after `->` is the result so far (each line copies the last one and prepends one digit), `c1` is
 *     the carry into the next column; the last column writes its whole sum (`9+4+1=14 -> 1432`).
 *   subtraction (a >= b), per column: `12-5=7 -> 7 b1` (borrowed: the column digit gets a leading 1, `b1` is the
 *     borrow from the next column), `8-4-1=3 -> 347`; the result so far keeps leading zeros (`-> 0001`).
 *   multiplication: one partial product per non-zero digit of the multiplier, shifted ones written as
 *     `347*2=694 -> 6940`, then running sums `2082+6940=9022`.
 */

const ZERO = '0'.charCodeAt(0);

function digitAt(s: string, fromRight: number): number {
  const i = s.length - 1 - fromRight;
  return i >= 0 ? s.charCodeAt(i) - ZERO : 0;
}

export function stripZeros(s: string): string {
  const t = s.replace(/^0+/, '');
  return t === '' ? '0' : t;
}

/** -1, 0, 1 for non-negative decimal strings without leading zeros. */
export function compareDec(a: string, b: string): number {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

export interface Worked {
  result: string;
  lines: string[];
}

export function addSteps(a: string, b: string): Worked {
  const n = Math.max(a.length, b.length);
  const lines: string[] = [];
  let acc = '';
  let carry = 0;
  for (let i = 0; i < n; i++) {
    const x = digitAt(a, i);
    const y = digitAt(b, i);
    const s = x + y + carry;
    const lhs = `${x}+${y}${carry ? '+1' : ''}=${s}`;
    if (i === n - 1) {
      acc = String(s) + acc;
      lines.push(`${lhs} -> ${acc}`);
    } else {
      acc = String(s % 10) + acc;
      carry = s >= 10 ? 1 : 0;
      lines.push(`${lhs} -> ${acc}${carry ? ' c1' : ''}`);
    }
  }
  return { result: stripZeros(acc), lines };
}

/** a - b for a >= b. */
export function subSteps(a: string, b: string): Worked {
  if (compareDec(a, b) < 0) throw new Error(`subSteps: ${a} < ${b}`);
  const lines: string[] = [];
  let acc = '';
  let borrow = 0;
  for (let i = 0; i < a.length; i++) {
    const x = digitAt(a, i);
    const y = digitAt(b, i);
    const tail = `-${y}${borrow ? '-1' : ''}`;
    let r = x - y - borrow;
    if (r < 0) {
      r += 10;
      acc = String(r) + acc;
      borrow = 1;
      lines.push(`1${x}${tail}=${r} -> ${acc} b1`);
    } else {
      acc = String(r) + acc;
      borrow = 0;
      lines.push(`${x}${tail}=${r} -> ${acc}`);
    }
  }
  return { result: stripZeros(acc), lines };
}

/** a * d for one digit d, by columns (used for the partial products; not shown step by step). */
function mulDigit(a: string, d: number): string {
  if (d === 0) return '0';
  let out = '';
  let carry = 0;
  for (let i = 0; i < a.length; i++) {
    const p = digitAt(a, i) * d + carry;
    out = String(p % 10) + out;
    carry = Math.floor(p / 10);
  }
  return stripZeros(String(carry) + out);
}

export function addDec(a: string, b: string): string {
  return addSteps(a, b).result;
}

export function mulSteps(a: string, b: string): Worked {
  // a zero factor: no partial products to show (they would all be zero)
  if (a === '0' || b === '0') return { result: '0', lines: [`${a}*${b}=0`] };
  const lines: string[] = [];
  let total: string | null = null;
  for (let i = 0; i < b.length; i++) {
    const d = digitAt(b, i);
    if (d === 0) continue;
    const p = mulDigit(a, d);
    const shifted = p + '0'.repeat(i);
    lines.push(i === 0 ? `${a}*${d}=${p}` : `${a}*${d}=${p} -> ${shifted}`);
    if (total === null) total = shifted;
    else {
      const sum = addDec(total, shifted);
      lines.push(`${total}+${shifted}=${sum}`);
      total = sum;
    }
  }
  return { result: total!, lines };
}
