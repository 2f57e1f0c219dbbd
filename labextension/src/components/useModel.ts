import { useEffect, useState } from 'react';

import type { IGpuModel } from '../tokens';

/** Re-render when the model changes. */
export function useModel(model: IGpuModel): void {
  const [, setVersion] = useState(0);
  useEffect(() => {
    const update = (): void => setVersion(v => v + 1);
    model.changed.connect(update);
    return () => {
      model.changed.disconnect(update);
    };
  }, [model]);
}
