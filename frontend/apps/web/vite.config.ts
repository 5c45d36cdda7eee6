import { sveltekit } from '@sveltejs/kit/vite';
import { defineConfig } from 'vite';

export default defineConfig({
  plugins: [sveltekit()],
  server: {
    // `pnpm dev`: forward API calls to a locally running backend.
    proxy: {
      '/api': 'http://localhost:8123'
    }
  }
});
