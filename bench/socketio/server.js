// One node of the Socket.IO cluster that scripts/bench-realtime measures petmesh against.
//
//   node server.js --port 4001 --redis redis://127.0.0.1:6379 [--host 127.0.0.1] [--key socket.io]
//
// Every node shares one Redis through @socket.io/redis-adapter, so a broadcast on one node
// reaches the room's members on every node, the way petmesh's nodes share room events:
// - `join` (with an acknowledgement) puts the socket in room "bench";
// - `publish` with any payload broadcasts `msg` with that payload to room "bench" on every
//   node (the publisher need not be a member);
// Only the websocket transport is served: clients connect to
// `ws://host:port/socket.io/?EIO=4&transport=websocket` without the HTTP long-polling step.
// Prints `ready <port>` once both Redis connections are up and the port is bound.
"use strict";

const { createServer } = require("node:http");
const { parseArgs } = require("node:util");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const ROOM = "bench";

async function main() {
  const { values } = parseArgs({
    options: {
      port: { type: "string" },
      host: { type: "string", default: "127.0.0.1" },
      redis: { type: "string" },
      key: { type: "string", default: "socket.io" },
    },
  });
  if (!values.port || !values.redis) {
    console.error("usage: node server.js --port PORT --redis REDIS_URL [--host HOST] [--key PREFIX]");
    process.exit(64);
  }

  // The adapter needs two connections: one publishes, the other is in subscriber mode.
  const pubClient = createClient({ url: values.redis });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    client.on("error", (err) => console.error("redis:", err.message));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const httpServer = createServer();
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    adapter: createAdapter(pubClient, subClient, { key: values.key }),
  });

  io.on("connection", (socket) => {
    socket.on("join", (ack) => {
      socket.join(ROOM);
      if (typeof ack === "function") ack();
    });
    socket.on("publish", (payload) => {
      io.to(ROOM).emit("msg", payload);
    });
  });

  httpServer.listen(Number(values.port), values.host, () => {
    console.log(`ready ${values.port}`);
  });

  const stop = () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).finally(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
