import React, { useState } from 'react';

/** A panel section whose title folds it away: at 8 GPUs, the environments stay one click from the top. */
export function Section(props: {
  id: string;
  title: string;
  extra?: React.ReactNode;
  className?: string;
  children: React.ReactNode;
}): JSX.Element {
  const [open, setOpen] = useState(true);
  const titleId = `jp-GpuEnv-${props.id}Title`;
  return (
    <section aria-labelledby={titleId} className={`${props.className ?? ''}${open ? '' : ' jp-mod-collapsed'}`}>
      <header className="jp-GpuEnv-sectionHeader">
        <h2 id={titleId}>
          <button
            className="jp-GpuEnv-sectionToggle"
            aria-expanded={open}
            title={open ? `Fold ${props.title}` : `Show ${props.title}`}
            onClick={() => setOpen(!open)}
          >
            <span className="jp-GpuEnv-caret" aria-hidden="true">
              {open ? '▾' : '▸'}
            </span>
            {props.title}
          </button>
        </h2>
        {props.extra}
      </header>
      {open ? props.children : null}
    </section>
  );
}
