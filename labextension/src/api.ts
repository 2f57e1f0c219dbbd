/** The REST client: the only place that builds URLs. Every request goes through ServerConnection, so
 * base URL, token and XSRF are Lab's (works behind JupyterHub's /user/<name>/). */
import { URLExt } from '@jupyterlab/coreutils';
import { KernelAPI, ServerConnection } from '@jupyterlab/services';

import {
  ApiError,
  IEnvironmentsReply,
  IGpuApi,
  IGpusReply,
  IHistoryReply,
  IKernel,
  IKernelsReply,
  IPullAnswer,
  ITerminalApi,
  ITerminalModel,
  TerminalTarget
} from './wire';

const TIMEOUT = 10_000; // ms: a request that hangs becomes an error the panel shows, not a spinner
// ms: parking copies a kernel's GPU memory (tens of GiB) to host memory, and the server may answer once it is done
const PARK_TIMEOUT = 180_000;

async function requestAPI<T>(
  path: string,
  settings: ServerConnection.ISettings,
  method = 'GET',
  body?: unknown,
  timeout = TIMEOUT
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'gpuenv/api', path);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeout);
  let response: Response;
  try {
    const init = { method, signal: abort.signal, body: body === undefined ? undefined : JSON.stringify(body) };
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(0, abort.signal.aborted ? `no answer within ${timeout / 1000} s` : String(error));
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
  const kernel = (id: string, action: string) =>
    requestAPI<IKernel>(`kernels/${encodeURIComponent(id)}/${action}`, settings, 'POST', undefined, PARK_TIMEOUT);
  return {
    gpus: () => requestAPI<IGpusReply>('gpus', settings),
    history: (since?: number) =>
      requestAPI<IHistoryReply>(since === undefined ? 'gpus/history' : `gpus/history?since=${since}`, settings),
    environments: () => requestAPI<IEnvironmentsReply>('environments', settings),
    kernels: () => requestAPI<IKernelsReply>('kernels', settings),
    pull: (name: string) => requestAPI<IPullAnswer>(`environments/${encodeURIComponent(name)}/pull`, settings, 'POST'),
    park: (kernelId: string) => kernel(kernelId, 'park'),
    resume: (kernelId: string) => kernel(kernelId, 'resume'),
    restart: async (kernelId: string) => {
      try {
        await KernelAPI.restartKernel(kernelId, settings); // Lab's own endpoint: POST api/kernels/ID/restart
      } catch (error) {
        throw error instanceof ServerConnection.ResponseError
          ? new ApiError(error.response.status, error.message)
          : new ApiError(0, String(error));
      }
    }
  };
}

/** Terminals in an environment: opened, read and closed over REST; their bytes over a websocket. */
export function createTerminalApi(
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): ITerminalApi {
  const path = (name: string) => `terminals/${encodeURIComponent(name)}`;
  return {
    open: (target: TerminalTarget) => requestAPI<ITerminalModel>('terminals', settings, 'POST', target),
    get: (name: string) => requestAPI<ITerminalModel>(path(name), settings),
    close: (name: string) => requestAPI<void>(path(name), settings, 'DELETE'),
    socketUrl: (name: string) => {
      const url = URLExt.join(settings.wsUrl, 'gpuenv/api', path(name), 'websocket');
      // as Lab's own terminals: a token in the address only where cookies do not authenticate websockets
      return settings.appendToken && settings.token ? `${url}?token=${encodeURIComponent(settings.token)}` : url;
    }
  };
}
