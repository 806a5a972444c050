import { REJECT_REASONS, type RejectReason } from '@tollgate/contracts';

/** Rejections of one request, by reason, with the first detail of each (for the partial-success message). */
export class RejectionTally {
  readonly counts = new Map<RejectReason, { n: number; detail: string }>();
  /** Rejections of calls that got as far as an event id (plan and tool checks), by event id. */
  readonly byEvent = new Map<string, RejectReason>();
  total = 0;
  add(reason: RejectReason, detail = '', eventId?: string): void {
    if (eventId !== undefined) this.byEvent.set(eventId, reason);
    const cur = this.counts.get(reason);
    if (cur) cur.n++;
    else this.counts.set(reason, { n: 1, detail });
    this.total++;
  }
  message(): string {
    if (this.total === 0) return '';
    const parts = [...this.counts].map(
      ([reason, { n, detail }]) =>
        `${reason} ×${n} (${REJECT_REASONS[reason]}${detail ? `; e.g. ${detail}` : ''})`,
    );
    return `rejected ${this.total}: ${parts.join('; ')}`;
  }
}
