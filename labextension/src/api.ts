/** The REST client: the only place that builds URLs. Every request goes through ServerConnection, so
 * base URL, token and XSRF are Lab's (works behind JupyterHub's /user/<name>/). */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { ApiError, IEnvironmentsReply, IGpuApi, IGpusReply, IHistoryReply, IKernelsReply } from './tokens';

const TIMEOUT = 10_000; // ms: a request that hangs becomes an error the panel shows, not a spinner

async function requestAPI<T>(path: string, settings: ServerConnection.ISettings): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'gpuenv/api', path);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, { signal: abort.signal }, settings);
  } catch (error) {
    throw new ApiError(0, abort.signal.aborted ? `no answer within ${TIMEOUT / 1000} s` : String(error));
  } finally {
    clearTimeout(timer);
  }
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // not JSON (a proxy's error page): reported below with the status
  }
  if (!response.ok) {
    throw new ApiError(response.status, data?.message || response.statusText || 'request failed');
  }
  return data as T;
}

export function createApi(settings: ServerConnection.ISettings = ServerConnection.makeSettings()): IGpuApi {
  return {
    gpus: () => requestAPI<IGpusReply>('gpus', settings),
    history: (since?: number) =>
      requestAPI<IHistoryReply>(since === undefined ? 'gpus/history' : `gpus/history?since=${since}`, settings),
    environments: () => requestAPI<IEnvironmentsReply>('environments', settings),
    kernels: () => requestAPI<IKernelsReply>('kernels', settings)
  };
}
