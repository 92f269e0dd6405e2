// Indexes of the csai-sidecar MongoDB backend (the sidecar also creates them at start).
// Run with: mongosh "$CSAI_MONGO_URI" deploy/mongodb-indexes.js
// Database and collection are the defaults (mongo_database, mongo_collection).
const sidecar = db.getSiblingDB("cs_ai");
// Session documents: MongoDB's TTL monitor removes them once `expire` has passed.
sidecar.sessions.createIndex({ expire: 1 }, { expireAfterSeconds: 0 });
// Message buckets: one per (session, incarnation, bucket number), and their own expiry.
sidecar.sessions_messages.createIndex({ sid: 1, gen: 1, b: 1 }, { unique: true });
sidecar.sessions_messages.createIndex({ expire: 1 }, { expireAfterSeconds: 0 });
// Learning data and security logs: time ranges of one stream, and their own expiry.
sidecar.sessions_records.createIndex({ s: 1, r: 1 }, { unique: true });
sidecar.sessions_records.createIndex({ expire: 1 }, { expireAfterSeconds: 0 });
