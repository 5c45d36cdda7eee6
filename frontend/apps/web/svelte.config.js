import adapter from '@sveltejs/adapter-static';
import { vitePreprocess } from '@sveltejs/vite-plugin-svelte';

/** @type {import('@sveltejs/kit').Config} */
const config = {
  preprocess: vitePreprocess(),
  kit: {
    // SvelteKit boots the SPA with an inline <script>. With `mode: 'hash'` it puts that
    // script's sha256 into a <meta http-equiv="content-security-policy"> in index.html, so
    // inline scripts run only when they match. nginx adds the header policy (frame-ancestors,
    // connect-src, ...); browsers enforce both policies.
    csp: {
      mode: 'hash',
      directives: {
        'script-src': ['self'],
        'object-src': ['none'],
        'base-uri': ['self']
      }
    },
    // SPA: every route is rendered client-side from index.html (nginx falls back to it).
    adapter: adapter({
      pages: 'build',
      assets: 'build',
      fallback: 'index.html',
      precompress: false,
      strict: true
    })
  }
};

export default config;
