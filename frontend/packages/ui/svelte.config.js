// Used by svelte-package and svelte-check. Svelte 5 understands `<script lang="ts">`
// natively, so no preprocessor (and no Vite) is needed in this package.
export default {};
