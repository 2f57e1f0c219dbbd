/**
 * A terminal session for Lab's own terminal widget whose shell runs in a container: the same protocol as
 * Lab's terminals (terminado's JSON messages), on the server's `gpuenv/api/terminals/NAME/websocket`.
 *
 * Lab's `TerminalConnection` only knows its own `terminals/websocket/NAME` address, so this implements the
 * same `Terminal.ITerminalConnection` interface instead. It reconnects after a dropped socket while the
 * server still has the terminal, and gives up quietly once the server says it ended.
 */
import type { ServerConnection, Terminal } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, ITerminalApi } from './wire';

const RECONNECT_LIMIT = 7;
const RESET = '\x1bc'; // a reconnect replays what the shell wrote: draw it on a clean screen, not twice

export interface ITerminalConnectionOptions {
  name: string;
  api: ITerminalApi;
  serverSettings: ServerConnection.ISettings;
}

export class GpuEnvTerminalConnection implements Terminal.ITerminalConnection {
  constructor(options: ITerminalConnectionOptions) {
    this._name = options.name;
    this._api = options.api;
    this.serverSettings = options.serverSettings;
    this._connect();
  }

  readonly serverSettings: ServerConnection.ISettings;

  get name(): string {
    return this._name;
  }

  get model(): Terminal.IModel {
    return { name: this._name };
  }

  get connectionStatus(): Terminal.ConnectionStatus {
    return this._status;
  }

  get connectionStatusChanged(): ISignal<this, Terminal.ConnectionStatus> {
    return this._statusChanged;
  }

  get messageReceived(): ISignal<Terminal.ITerminalConnection, Terminal.IMessage> {
    return this._messageReceived;
  }

  get disposed(): ISignal<this, void> {
    return this._disposed;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Send now if connected, else when the connection is back (what Lab's connection does). */
  send(message: Terminal.IMessage): void {
    if (this._isDisposed || !message.content) {
      return;
    }
    if (this._status === 'connected' && this._ws) {
      this._ws.send(JSON.stringify([message.type, ...message.content]));
    } else {
      this._pending.push(message);
    }
  }

  reconnect(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const settle = (_: unknown, status: Terminal.ConnectionStatus): void => {
        if (status === 'connected' || status === 'disconnected') {
          this._statusChanged.disconnect(settle);
          if (status === 'connected') {
            resolve();
          } else {
            reject(new Error('the terminal could not be reached again'));
          }
        }
      };
      this._statusChanged.connect(settle);
      this._attempt = 0;
      this._connect();
    });
  }

  /** Close the terminal on the server: its shell is hung up, a container of its own removed. */
  async shutdown(): Promise<void> {
    try {
      await this._api.close(this._name);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) {
        throw error; // 404: it had ended already
      }
    } finally {
      this.dispose();
    }
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._setStatus('disconnected');
    clearTimeout(this._timer);
    this._clearSocket();
    this._disposed.emit();
    Signal.clearData(this);
  }

  private _connect(): void {
    if (this._isDisposed) {
      return;
    }
    this._clearSocket();
    this._setStatus('connecting');
    const ws = new this.serverSettings.WebSocket(this._api.socketUrl(this._name));
    ws.onmessage = (event: MessageEvent) => this._onMessage(event);
    ws.onclose = (event: CloseEvent) => this._onClose(event);
    this._ws = ws;
  }

  private _onMessage(event: MessageEvent): void {
    if (this._isDisposed) {
      return;
    }
    let data: any[];
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    const [type, ...content] = data;
    if (type === 'setup') {
      const again = this._connectedBefore;
      this._connectedBefore = true;
      this._setStatus('connected');
      if (again) {
        this._messageReceived.emit({ type: 'stdout', content: [RESET] });
      }
      return;
    }
    if (type === 'disconnect') {
      this.dispose(); // the shell ended: the widget closes (or says so), as with Lab's terminals
      return;
    }
    if (this._status === 'connected' && (type === 'stdout' || type === 'set_size' || type === 'stdin')) {
      this._messageReceived.emit({ type, content });
    }
  }

  private _onClose(event: CloseEvent): void {
    if (this._isDisposed) {
      return;
    }
    this._ws = null;
    if (this._attempt >= RECONNECT_LIMIT) {
      this._setStatus('disconnected');
      return;
    }
    this._setStatus('connecting');
    const delay = this._attempt === 0 ? 0 : Math.min(1000 * 2 ** this._attempt, 30_000) * Math.random();
    this._attempt++;
    this._timer = setTimeout(() => void this._retry(), delay);
  }

  /** Connect again if the server still has the terminal; if it has ended, so does this connection. */
  private async _retry(): Promise<void> {
    try {
      await this._api.get(this._name);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        this.dispose();
        return;
      }
    }
    this._connect();
  }

  private _setStatus(status: Terminal.ConnectionStatus): void {
    if (status === this._status) {
      return;
    }
    this._status = status;
    if (status === 'connected') {
      this._attempt = 0;
      const pending = this._pending.splice(0);
      pending.forEach(message => this.send(message));
    }
    this._statusChanged.emit(status);
  }

  private _clearSocket(): void {
    if (this._ws) {
      this._ws.onmessage = null;
      this._ws.onclose = null;
      this._ws.close();
      this._ws = null;
    }
  }

  private _name: string;
  private _api: ITerminalApi;
  private _ws: WebSocket | null = null;
  private _status: Terminal.ConnectionStatus = 'connecting';
  private _connectedBefore = false;
  private _attempt = 0;
  private _timer: ReturnType<typeof setTimeout> | undefined = undefined;
  private _pending: Terminal.IMessage[] = [];
  private _isDisposed = false;
  private _statusChanged = new Signal<this, Terminal.ConnectionStatus>(this);
  private _messageReceived = new Signal<Terminal.ITerminalConnection, Terminal.IMessage>(this);
  private _disposed = new Signal<this, void>(this);
}
