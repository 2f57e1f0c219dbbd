// react-dom comes with JupyterLab (its React widgets render with it); the panel's tests render to a string.
declare module 'react-dom/server' {
  import type { ReactElement } from 'react';
  export function renderToStaticMarkup(element: ReactElement): string;
}
