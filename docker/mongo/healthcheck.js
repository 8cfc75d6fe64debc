// Compose health check for the mongo service (run by mongosh inside the container).
// Initiates the single-node replica set rs0 on first run, like `lakeward stack up` does, and
// reports healthy only once this node is PRIMARY, so dependants can use transactions and change
// streams as soon as they start.
try {
  rs.status();
} catch (e) {
  if (e.codeName !== "NotYetInitialized") throw e;
  const member = process.env.MONGO_RS_MEMBER || "127.0.0.1:27017";
  rs.initiate({ _id: "rs0", members: [{ _id: 0, host: member }] });
}
if (!db.hello().isWritablePrimary) {
  print("rs0 has no primary yet");
  quit(1);
}
