/** Visual states a StatusBadge can show. */
export type Status = 'ok' | 'degraded' | 'down' | 'pending';
