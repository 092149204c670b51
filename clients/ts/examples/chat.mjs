// Two users of a login server push to each other over TCP (or WebSocket with a ws:// address).
// Run: node examples/chat.mjs 127.0.0.1:7100 FINGERPRINT   (what `zserver serve` prints)
import { connect, LoginClient } from "@zserver/client/node";

const [address, pin] = process.argv.slice(2);
const ann = new LoginClient(await connect(address, { pin }));
const bob = new LoginClient(await connect(address, { pin }));
await ann.register("ann", "ann-secret");
await bob.register("bob", "bob-secret");
await ann.login("ann", "ann-secret");
await bob.login("bob", "bob-secret");
const heard = new Promise((resolve) => bob.on("message", resolve));
const report = await ann.push(["bob"], "hello from TypeScript");
const message = await heard;
console.log(`${message.from} -> bob: ${message.text} (delivered to ${report.delivered})`);
console.log(`online: ${(await bob.who()).join(", ")}`);
ann.close();
bob.close();
