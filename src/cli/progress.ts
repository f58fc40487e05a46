/**
 * Progress on stderr, only when stderr is a terminal (pipes and CI logs stay clean). A bar when the total is
 * known, a spinner otherwise; both redraw one line in place and erase it when done.
 */
const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

export interface Progress {
  /** done/total known: draws a bar */
  update(done: number, total: number, detail?: string): void;
  /** changes the spinner's text */
  status(text: string): void;
  /** erases the line (and stops the spinner) */
  done(): void;
}

const quiet: Progress = { update() {}, status() {}, done() {} };

export function progress(label: string, stream: NodeJS.WriteStream = process.stderr): Progress {
  if (!stream.isTTY || process.env.GRAVITY_NO_PROGRESS === '1') return quiet;
  let text = label;
  let frame = 0;
  let lastDraw = 0;
  const draw = (line: string) => {
    const width = Math.max(20, (stream.columns ?? 80) - 1);
    stream.write('\r\x1b[2K' + (line.length > width ? line.slice(0, width - 1) + '…' : line));
  };
  // The spinner only moves when the event loop is free; during long synchronous work it simply pauses.
  const timer = setInterval(() => draw(`${FRAMES[frame++ % FRAMES.length]} ${text}`), 100);
  timer.unref();
  return {
    update(done, total, detail) {
      const now = Date.now();
      if (done < total && now - lastDraw < 50) return; // redrawing every tensor would cost more than loading it
      lastDraw = now;
      const frac = total > 0 ? Math.min(1, done / total) : 0;
      const w = 24;
      const fill = Math.round(frac * w);
      text = `${label} [${'█'.repeat(fill)}${'·'.repeat(w - fill)}] ${done}/${total}${detail ? ' ' + detail : ''}`;
      draw(text);
    },
    status(t) {
      text = `${label}: ${t}`;
      draw(`${FRAMES[frame % FRAMES.length]} ${text}`);
    },
    done() {
      clearInterval(timer);
      stream.write('\r\x1b[2K');
    },
  };
}
