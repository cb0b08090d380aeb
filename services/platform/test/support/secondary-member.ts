/**
 * A stand-in for one member of a MongoDB replica set that has no primary (during an election, or
 * with the majority down): it answers every command with the `hello` reply of a secondary of set
 * `rs0`, listing only itself (the driver's handshake may come as a legacy OP_QUERY or as
 * OP_MSG). Enough for the driver's server discovery, which is all a test of "no primary" needs.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { BSON } from 'mongodb';

const OP_REPLY = 1;
const OP_QUERY = 2004;
const OP_MSG = 2013;

/** The reply to a request, as `hello` of a secondary reachable at `address`. */
function replyTo(message: Buffer, address: string): Buffer {
  const body = BSON.serialize({
    helloOk: true,
    ismaster: false,
    isWritablePrimary: false,
    secondary: true,
    setName: 'rs0',
    hosts: [address],
    me: address,
    minWireVersion: 0,
    maxWireVersion: 21,
    maxBsonObjectSize: 16 * 1024 * 1024,
    maxMessageSizeBytes: 48_000_000,
    maxWriteBatchSize: 100_000,
    localTime: new Date(),
    ok: 1,
  });
  const requestId = message.readInt32LE(4);
  const legacy = message.readInt32LE(12) === OP_QUERY;
  const headerBytes = legacy ? 36 : 21;
  const out = Buffer.alloc(headerBytes + body.length);
  out.writeInt32LE(out.length, 0);
  out.writeInt32LE(1, 4);
  out.writeInt32LE(requestId, 8);
  out.writeInt32LE(legacy ? OP_REPLY : OP_MSG, 12);
  if (legacy) out.writeInt32LE(1, 32); // one document returned; flags, cursor and start are 0
  out.set(body, headerBytes);
  return out;
}

export interface SecondaryMember {
  /** A URI naming the set, so that the driver discovers it as a replica set. */
  readonly uri: string;
  close(): Promise<void>;
}

export async function startSecondaryMember(): Promise<SecondaryMember> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let pending = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 4 && pending.length >= pending.readInt32LE(0)) {
        const length = pending.readInt32LE(0);
        const address = server.address();
        const port = typeof address === 'object' && address !== null ? address.port : 0;
        socket.write(replyTo(pending.subarray(0, length), `127.0.0.1:${port}`));
        pending = pending.subarray(length);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  return {
    uri: `mongodb://127.0.0.1:${port}/?replicaSet=rs0`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => {
          resolve();
        });
      }),
  };
}
