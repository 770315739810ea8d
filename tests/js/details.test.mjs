// Protocol details centrifuge-js relies on, checked with the real SDK: recovery from a
// position without an epoch, the "reject unrecovered" subscribe flag (its getState mode),
// the "cache" recovery mode, fossil delta compression and tags filters.
//
// One server with the namespaces these need; run by run-all.mjs over WebSocket.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { compatTest, startServer, namespace, parsedFrames, sleep } from './harness.mjs';

let server;

before(async () => {
  server = await startServer({
    namespaces: [
      namespace(''),
      // Keeps 3 publications: older positions cannot be recovered.
      namespace('small', { history_size: 3 }),
      // The latest publication is the channel's state.
      namespace('cache', { force_recovery_mode: 'cache' }),
    ],
  });
});

after(async () => {
  if (server) await server.stop();
});

const t = (name, fn, opts = {}) => compatTest(name, fn, { getServer: () => server, ...opts });

let counter = 0;
const uniq = (prefix) => `${prefix}-${process.pid}-${++counter}`;

const apiPublish = (channel, data) => server.apiOk('publish', { channel, data });

t('recovery: a since position without epoch recovers what follows the offset', async (ctx) => {
  const ch = uniq('noepoch');
  for (let n = 1; n <= 4; n++) await apiPublish(ch, { n });
  const a = await ctx.subscribed('alice', ch, { since: { offset: 2 } });
  const sent = parsedFrames(a.c, '>').find((f) => f.subscribe);
  assert.equal(sent.subscribe.epoch, undefined, 'the SDK sent no epoch');
  assert.equal(a.ctx.wasRecovering, true);
  assert.equal(a.ctx.recovered, true);
  const pubs = await a.events.take('publication', 2);
  assert.deepEqual(pubs.map((p) => p.data.n), [3, 4]);
  assert.ok(a.ctx.streamPosition.epoch, 'the reply tells the epoch');
});

t('getState: an unrecoverable position is refused with 112, and the SDK reloads its state', async (ctx) => {
  const ch = `small:${uniq('state')}`;
  let first;
  for (let n = 1; n <= 6; n++) {
    const r = await apiPublish(ch, { n });
    if (n === 1) first = r;
  }
  const positions = [];
  // The first load says the app's state is as of offset 1 (pruned since); the second
  // reads the channel's top, as an app reloading from its database would.
  const getState = async () => {
    if (positions.length === 0) {
      positions.push({ offset: first.offset, epoch: first.epoch });
    } else {
      const top = await server.apiOk('history', { channel: ch, limit: 0 });
      positions.push({ offset: top.offset, epoch: top.epoch });
    }
    return positions[positions.length - 1];
  };
  const a = await ctx.subscribed('alice', ch, { getState });
  assert.equal(positions.length, 2, 'getState was called again after the refusal');
  const replies = parsedFrames(a.c, '<').filter((f) => f.id && (f.subscribe || f.error));
  assert.equal(replies[0].error?.code, 112, `first subscribe refused: ${JSON.stringify(replies[0])}`);
  const sent = parsedFrames(a.c, '>').filter((f) => f.subscribe);
  assert.ok(sent[0].subscribe.flag & 2, 'the SDK asked to be refused rather than not recovered');
  assert.equal(a.ctx.recovered, true, 'subscribed from the reloaded position');
  await apiPublish(ch, { n: 7 });
  const p = await a.events.next('publication');
  assert.equal(p.data.n, 7);
});

t('cache recovery: a subscriber gets the latest publication, once', async (ctx) => {
  const ch = `cache:${uniq('state')}`;
  for (let n = 1; n <= 5; n++) await apiPublish(ch, { n });
  // `since: {}`: recover without a position, the way to ask for the cached state.
  const a = await ctx.subscribed('alice', ch, { since: {} });
  assert.equal(a.ctx.recovered, true);
  const state = await a.events.next('publication');
  assert.equal(state.data.n, 5, 'the latest publication is the state');
  await sleep(200);
  assert.equal(a.events.count('publication'), 1, 'only the latest one');

  // A reconnect with the latest already known brings nothing again; new ones arrive live.
  const d = a.c.events.next('disconnected');
  a.c.centrifuge.disconnect();
  await d;
  a.c.centrifuge.connect();
  const again = await a.events.next('subscribed');
  assert.equal(again.recovered, true);
  await apiPublish(ch, { n: 6 });
  const live = await a.events.next('publication', (p) => p.data.n === 6);
  assert.equal(live.offset, 6);
  assert.equal(a.events.count('publication'), 2, 'nothing delivered twice');
});
