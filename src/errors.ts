/** An error meant for users: one line, names the file / tensor / option at fault. The CLI prints only the
 * message (no stack) unless GRAVITY_DEBUG=1. */
export class GravityError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GravityError';
  }
}

export function fail(message: string): never {
  throw new GravityError(message);
}
