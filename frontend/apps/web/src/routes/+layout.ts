// Single-page app: no server-side rendering, no prerendering of routes.
// adapter-static writes the fallback index.html that nginx serves for every path.
export const ssr = false;
export const prerender = false;
