import { describe, expect, it } from 'vitest';
import { ActivitySessions, activitySessionId } from '../src/billing-session.js';

describe('ActivitySessions (rule 4)', () => {
  it('keeps a caller in one session while its calls are within the gap, and opens a new one after', () => {
    const a = new ActivitySessions(1000);
    const first = a.sessionOf('c', 'ag', 'cred', 10_000);
    expect(first).toBe(activitySessionId('c', 'ag', 'cred', 10_000));
    // the previous caller again (the fast path) and after another caller (the map path): same session
    expect(a.sessionOf('c', 'ag', 'cred', 10_900)).toBe(first);
    expect(a.sessionOf('other', 'ag', 'cred', 10_950)).not.toBe(first);
    expect(a.sessionOf('c', 'ag', 'cred', 11_800)).toBe(first);
    // each call moves the caller's last activity: the gap counts from the latest call
    expect(a.sessionOf('c', 'ag', 'cred', 12_700)).toBe(first);
    // a gap longer than 1000 ms since the last call: a new session, on the fast path too
    const second = a.sessionOf('c', 'ag', 'cred', 13_701);
    expect(second).toBe(activitySessionId('c', 'ag', 'cred', 13_701));
    expect(a.sessionOf('c', 'ag', 'cred', 13_702)).toBe(second);
  });

  it('tells callers apart by customer, agent and credential', () => {
    const a = new ActivitySessions(1000);
    const ids = [
      a.sessionOf('c', 'ag', 'x', 1),
      a.sessionOf('c', 'ag', 'y', 1),
      a.sessionOf('c', 'ag2', 'x', 1),
      a.sessionOf('c2', 'ag', 'x', 1),
    ];
    expect(new Set(ids).size).toBe(4);
    expect(a.sessionOf('c', 'ag', 'x', 2)).toBe(ids[0]);
  });

  it('drops the oldest callers beyond maxCallers, the previous caller included once it is dropped', () => {
    const a = new ActivitySessions(1000, 2);
    const c1 = a.sessionOf('c1', '', '', 0);
    a.sessionOf('c2', '', '', 5000); // c1 is idle past the gap: dropped when c3 arrives
    a.sessionOf('c3', '', '', 5001);
    expect(a.size).toBe(2);
    // c1 again opens a new session (its old one expired and was dropped)
    expect(a.sessionOf('c1', '', '', 5002)).not.toBe(c1);
    expect(a.size).toBe(2);
  });
});
