/** What the benchmark scripts share: checked integer options, medians, and progress lines on stderr. */

/** --name's value as an integer in min..max, or an error naming the option, the value and the range. */
export function intArg(name: string, text: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const n = Number(text);
  if (text.trim() === "" || !Number.isInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in ${min}..${max}`;
    throw new Error(`--${name} ${text}: expected an integer ${range}`);
  }
  return n;
}

/** The median (the mean of the middle two for an even count); NaN for no values. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** A progress line on stderr with the time of day, so stdout keeps only the tables. */
export function log(msg: string): void {
  console.error(`[${new Date().toISOString().slice(11, 19)}] ${msg}`);
}
