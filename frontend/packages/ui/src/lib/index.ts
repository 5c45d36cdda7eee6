export { default as Card } from './Card.svelte';
export { default as StatusBadge } from './StatusBadge.svelte';
export type { Status } from './types.js';
