// A storefront in Node.js that knows recbandit only from protos/recbandit/v1/recbandit.proto.
//
// Usage: node storefront.js TARGET PROTO_DIR GOOGLE_RPC_DIR EVENTS
// Prints one JSON object: the reward rate of the first and last fifth of the events, every
// decision's event id, item and probability (to compare with the server's log), and the
// BadRequest detail of a refused call.
"use strict";

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

// The loader options recbandit's README recommends: without keepCase, snake_case fields are
// dropped; without defaults, slot 0 and other zero values arrive as undefined.
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

const [target, protoDir, rpcDir, eventsArg] = process.argv.slice(2);
const events = Number(eventsArg);

const api = grpc.loadPackageDefinition(
  protoLoader.loadSync("recbandit/v1/recbandit.proto", { ...LOADER_OPTIONS, includeDirs: [protoDir] }),
).recbandit.v1;
const recommender = new api.Recommender(target, grpc.credentials.createInsecure());
const catalog = new api.Catalog(target, grpc.credentials.createInsecure());

const call = (client, method, request) => new Promise((resolve, reject) => {
  client[method](request, { deadline: Date.now() + 10000 }, (error, reply) => (error ? reject(error) : resolve(reply)));
});
const text = (value) => ({ string_value: value }); // a FeatureValue: set exactly one field of the oneof

// The planted preference: vip users buy shoes, the others buy bags.
const ITEMS = ["shoe-1", "shoe-2", "shoe-3", "bag-1", "bag-2", "bag-3"];
const category = (itemId) => itemId.split("-")[0];
const reward = (segment, itemId) => ((segment === "vip") === (category(itemId) === "shoe") ? 1 : 0);

// A refusal's google.rpc.Status arrives, serialised, in the grpc-status-details-bin trailer.
const rpcTypes = new protobuf.Root();
rpcTypes.resolvePath = (_, file) => `${rpcDir}/${file}`;
rpcTypes.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });

function decodeStatus(bytes) {
  const Status = rpcTypes.lookupType("google.rpc.Status");
  const BadRequest = rpcTypes.lookupType("google.rpc.BadRequest");
  const status = Status.decode(bytes);
  return status.details
    .filter((any) => any.type_url.endsWith("/google.rpc.BadRequest"))
    .map((any) => BadRequest.decode(any.value).field_violations.map((v) => [v.field, v.description]))
    .flat();
}

async function main() {
  await call(catalog, "UpsertItems", {
    items: ITEMS.map((item_id) => ({ item_id, active: true, features: { category: text(category(item_id)) } })),
  });
  const rewards = [];
  const decisions = [];
  for (let i = 0; i < events; i += 1) {
    const segment = i % 2 === 0 ? "vip" : "basic";
    const answer = await call(recommender, "Recommend", {
      user_id: `node-user-${i % 40}`,
      user_features: { segment: text(segment) },
      context: { channel: text("app") },
      event_id: `node-${i}`,
    });
    const [first] = answer.items; // slot 0: present thanks to defaults: true
    decisions.push([answer.event_id, first.item_id, first.probability, first.slot]);
    const earned = reward(segment, first.item_id);
    rewards.push(earned);
    const fed = await call(recommender, "Feedback", { event_id: answer.event_id, item_id: first.item_id,
      reward: earned, label: "purchase" });
    if (fed.status !== "RECORD_STATUS_NEW") throw new Error(`Feedback answered ${fed.status}`);
  }
  const fifth = Math.floor(events / 5);
  const rate = (part) => part.reduce((a, b) => a + b, 0) / part.length;
  let violations = [];
  try {
    await call(recommender, "Recommend", { user_id: "node-user-0", num_results: 99 });
  } catch (error) {
    violations = decodeStatus(error.metadata.get("grpc-status-details-bin")[0]);
  }
  process.stdout.write(JSON.stringify({
    first_rate: rate(rewards.slice(0, fifth)), last_rate: rate(rewards.slice(-fifth)), decisions, violations,
  }));
}

main().catch((error) => { process.stderr.write(`${error.stack}\n`); process.exit(1); });
