// The bench's Socket.IO 4 peer: a broadcast server of a few lines, as a Socket.IO user
// would write it. Rooms stand for channels.
//
//   client → server  42<ack>["sub","<room>"]   join a room, acknowledged with 43<ack>["ok"]
//   POST /publish/<room>  (JSON body)           io.to(room).emit("m", body) → 42["m",{..}]
//
// Prints `socketio listening on http://ADDR` once bound (PORT=0 picks a free port).
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const server = http.createServer((req, res) => {
  if (req.method !== "POST" || !req.url.startsWith("/publish/")) {
    res.writeHead(404, { "Content-Length": 0 });
    res.end();
    return;
  }
  const room = decodeURIComponent(req.url.slice("/publish/".length));
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let data;
    try {
      data = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      res.writeHead(400, { "Content-Length": 0 });
      res.end();
      return;
    }
    io.to(room).emit("m", data);
    res.writeHead(200, { "Content-Type": "application/json", "Content-Length": 2 });
    res.end("{}");
  });
});

const io = new Server(server, {
  transports: ["websocket"],
  perMessageDeflate: false,
  serveClient: false,
});

io.on("connection", (socket) => {
  socket.on("sub", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack("ok");
  });
});

server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  const { address, port } = server.address();
  console.log(`socketio listening on http://${address}:${port}`);
});

const stop = () => {
  io.close();
  server.close();
  setTimeout(() => process.exit(0), 200).unref();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
