// tandem's dashboard: polls the HTTP API every second and shows each number
// split into its final (batch) and provisional (speed) parts.
'use strict';

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 1000;
const ADDITIVE = new Set(['count', 'sum']);
const state = {
  views: [],
  key: null,
  token: sessionStorage.getItem('tandem-token'),
  previous: null,
  timer: null,
  busy: false,
  series: null,
  seriesSize: '',
};

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

const whole = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const cents = new Intl.NumberFormat('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const rate = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });
const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const UNITS = { ms: 1, s: SECOND, m: MINUTE, h: HOUR, d: DAY };

function format(metric, value) {
  if (value === null || value === undefined) return '–';
  return metric.agg === 'count' || metric.agg === 'distinct' ? whole.format(value) : cents.format(value);
}

function ago(ms) {
  const seconds = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function view() {
  return state.views.find((candidate) => candidate.name === $('view').value) || state.views[0];
}

function metricOf(name) {
  return view().metrics.find((metric) => metric.name === name);
}

function rangeQuery() {
  const range = $('range').value;
  return range === 'all' ? '' : `&from=${Date.now() - Number(range)}`;
}

function showMessage(text) {
  $('message').textContent = text;
  $('message').hidden = !text;
}

function fillMetricSelect(select, metrics, preferred) {
  const before = select.value;
  select.replaceChildren(...metrics.map((metric) => el('option', { value: metric.name }, metric.name)));
  const names = metrics.map((metric) => metric.name);
  select.value = names.includes(before) ? before : names.includes(preferred) ? preferred : names[0];
}

function onViewChange() {
  const metrics = view().metrics;
  fillMetricSelect($('top-metric'), metrics, 'revenue');
  fillMetricSelect($('series-metric'), metrics.filter((metric) => ADDITIVE.has(metric.agg)).concat(
    metrics.filter((metric) => !ADDITIVE.has(metric.agg))), 'orders');
  state.key = null;
  refreshSoon();
}

function renderTotals(merged, batch, speed) {
  const cards = view().metrics.map((metric) => {
    const value = merged.metrics[metric.name];
    const card = el('div', { class: 'metric', 'data-metric': metric.name, 'data-value': String(value) },
      el('div', { class: 'name' }, `${metric.name} · ${metric.agg}${metric.field ? ` of ${metric.field}` : ''}`),
      el('div', { class: 'value' }, format(metric, value)));
    if (ADDITIVE.has(metric.agg)) {
      const final = batch.metrics[metric.name] || 0;
      const provisional = speed.metrics[metric.name] || 0;
      const total = final + provisional;
      const share = total > 0 ? (100 * final) / total : 0;
      card.setAttribute('data-final', String(final));
      card.setAttribute('data-provisional', String(provisional));
      const bar = el('div', { class: 'split' },
        el('span', { class: 'final', style: `width:${share}%` }),
        el('span', { class: 'provisional', style: `width:${total > 0 ? 100 - share : 0}%` }));
      card.append(bar, el('div', { class: 'parts' },
        el('span', { class: 'final-part' }, `${format(metric, final)} final`), ' · ',
        el('span', { class: 'provisional-part' }, `${format(metric, provisional)} provisional`)));
    } else {
      card.append(el('div', { class: 'parts muted' }, 'not additive: the merged value'));
    }
    return card;
  });
  $('totals').replaceChildren(...cards);
}

// The top answer holds merged values only: for count and sum, each shown key's
// batch value gives the final part. Other aggregates cannot be split.
async function topWithFinals(name, metricName, range) {
  const top = await api(`/v1/views/${name}/top?metric=${encodeURIComponent(metricName)}&n=10${range}`);
  const metric = metricOf(top.metric);
  if (!metric || !ADDITIVE.has(metric.agg)) return { top, finals: null };
  const answers = await Promise.all(top.items.map((item) =>
    api(`/v1/views/${name}/keys/${encodeURIComponent(item.key)}?layer=batch${range}`)));
  return { top, finals: answers.map((answer) => answer.metrics[top.metric] || 0) };
}

function splitMerged(merged, batch) {
  if (!(merged > 0)) return { final: merged || 0, provisional: 0 };
  const final = Math.min(Math.max(batch, 0), merged);
  // Sums of decimals may differ in the last bits between layers; that is no provisional part.
  return merged - final <= merged * 1e-9 ? { final: merged, provisional: 0 } : { final, provisional: merged - final };
}

function topBar(metric, value, parts, width) {
  if (!parts) {
    return el('div', { class: 'bar', style: `width:${width}%`, title: `${metric.agg} is not additive: the merged value` });
  }
  const { final, provisional } = parts;
  const share = value > 0 ? (100 * final) / value : 0;
  return el('div', { class: 'bar split', style: `width:${width}%`,
    title: `${format(metric, final)} final · ${format(metric, provisional)} provisional` },
  el('span', { class: 'final', style: `width:${share}%` }),
  el('span', { class: 'provisional', style: `width:${value > 0 ? 100 - share : 0}%` }));
}

function renderTop({ top, finals }) {
  const metric = metricOf(top.metric);
  const values = top.items.map((item) => item.metrics[top.metric] || 0);
  const max = Math.max(...values, 0);
  const rows = top.items.map((item, i) => {
    const value = item.metrics[top.metric];
    const width = max > 0 ? (100 * Math.max(value || 0, 0)) / max : 0;
    const parts = finals ? splitMerged(value || 0, finals[i]) : null;
    const row = el('tr', { 'data-key': item.key, 'data-value': String(value) },
      el('td', {}, String(i + 1)),
      el('td', { class: 'key' }, item.key),
      el('td', { class: 'num value' }, format(metric, value)),
      el('td', { class: 'bar-cell' }, topBar(metric, value, parts, width)));
    if (parts) {
      row.setAttribute('data-final', String(parts.final));
      row.setAttribute('data-provisional', String(parts.provisional));
    }
    if (item.key === state.key) row.classList.add('selected');
    row.addEventListener('click', () => {
      state.key = item.key;
      refreshSoon();
    });
    return row;
  });
  $('top').tBodies[0].replaceChildren(...rows);
  $('top-note').textContent = finals
    ? 'Click a key to chart it. Bars: final (batch) blue, provisional (speed) amber.'
    : `Click a key to chart it. ${metric ? metric.agg : 'This metric'} is not additive: bars show the merged value.`;
}

function durationMs(text) {
  const match = /^(\d+)(ms|s|m|h|d)$/.exec(text || '');
  return match ? Number(match[1]) * UNITS[match[2]] : MINUTE;
}

let ruler = null;
function textWidth(text) {
  ruler = ruler || document.createElement('canvas').getContext('2d');
  ruler.font = `12px ${getComputedStyle(document.body).fontFamily}`;
  return ruler.measureText(text).width;
}

// 1, 2 or 5 times a power of ten, at least `rough`.
function niceStep(rough) {
  const power = 10 ** Math.floor(Math.log10(rough));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= rough);
}

function valueTicks(top, integer) {
  const step = top > 0 ? Math.max(niceStep(top / 4), integer ? 1 : 0) : 1;
  const max = top > 0 ? step * Math.ceil(top / step - 1e-9) : step;
  const digits = Math.max(0, -Math.floor(Math.log10(step)));
  const numbers = new Intl.NumberFormat('en-US', max >= 1e4
    ? { notation: 'compact', maximumFractionDigits: 1 }
    : { maximumFractionDigits: digits });
  const ticks = [];
  for (let i = 0; i * step <= max && (top > 0 || i === 0); i += 1) ticks.push({ value: i * step, label: numbers.format(i * step) });
  return { max, ticks };
}

const TIME_STEPS = [SECOND, 5 * SECOND, 10 * SECOND, 15 * SECOND, 30 * SECOND,
  MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE,
  HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY];

function timeLabeller(span, step) {
  const clock = { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' };
  if (step < MINUTE) clock.second = '2-digit';
  const options = span < DAY ? clock : step >= DAY ? { month: 'short', day: 'numeric' } : { month: 'short', day: 'numeric', ...clock };
  const formatter = new Intl.DateTimeFormat(undefined, options);
  return (ms) => formatter.format(ms);
}

// A few ticks at round local times, spaced so their labels never touch.
function timeTicks(from, to, plotWidth) {
  const span = to - from;
  if (!(span > 0)) return [];
  const sample = timeLabeller(span, span / 6 < MINUTE ? SECOND : MINUTE)(from);
  const fits = Math.max(1, Math.min(5, plotWidth / (textWidth(sample) + 16)));
  const step = TIME_STEPS.find((candidate) => span / candidate <= fits) || Math.ceil(span / fits / DAY) * DAY;
  const label = timeLabeller(span, step);
  const offset = -new Date(from).getTimezoneOffset() * MINUTE;
  const ticks = [];
  for (let at = Math.ceil((from + offset) / step) * step - offset; at <= to; at += step) {
    ticks.push({ at, label: label(at) });
  }
  return ticks;
}

const fullTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function renderSeries(metricName, batch, speed) {
  const metric = metricOf(metricName);
  const additive = ADDITIVE.has(metric.agg);
  const byStart = new Map();
  for (const [layer, answer] of [['final', batch], ['provisional', speed]]) {
    for (const bucket of answer.buckets) {
      const entry = byStart.get(bucket.start) || { start: bucket.start, at: Date.parse(bucket.start), final: 0, provisional: 0 };
      entry[layer] = bucket.metrics[metricName] || 0;
      byStart.set(bucket.start, entry);
    }
  }
  const buckets = [...byStart.values()].sort((a, b) => a.at - b.at).slice(-120);
  state.series = { metric, additive, buckets, bucketMs: durationMs(view().bucket) };
  drawSeries();
  $('series').setAttribute('data-buckets', String(buckets.length));
  $('series-key').textContent = state.key || 'all keys';
  $('series-all').hidden = !state.key;
  $('series-note').textContent = buckets.length === 0
    ? 'No buckets in this range.'
    : additive
      ? `${buckets.length} buckets; final (batch) below, provisional (speed) stacked on top.`
      : `${buckets.length} buckets; ${metric.agg} is not additive, so each layer is drawn on its own.`;
}

// Drawn in the element's own pixels, so text is never stretched; redrawn on resize.
function drawSeries() {
  const chart = $('series');
  const { width, height } = chart.getBoundingClientRect();
  state.seriesSize = `${Math.round(width)}x${Math.round(height)}`;
  if (!state.series || width === 0) return;
  const { metric, additive, buckets, bucketMs } = state.series;
  chart.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const top = Math.max(...buckets.map((b) => (additive ? b.final + b.provisional : Math.max(b.final, b.provisional))), 0);
  const values = valueTicks(top, metric.agg === 'count' || metric.agg === 'distinct');
  const left = Math.ceil(Math.max(...values.ticks.map((tick) => textWidth(tick.label)))) + 10;
  const [right, above, below] = [6, 8, 24];
  const base = height - below;
  const plotWidth = width - left - right;
  const scale = (value) => (value / values.max) * (base - above);
  const nodes = [];
  for (const tick of values.ticks) {
    const y = base - scale(tick.value);
    nodes.push(svg('line', { x1: left, x2: width - right, y1: y, y2: y }));
    nodes.push(svg('text', { x: left - 6, y: y + 4, 'text-anchor': 'end' }, tick.label));
  }
  const from = buckets.length ? buckets[0].at : 0;
  const to = buckets.length ? buckets[buckets.length - 1].at + bucketMs : 0;
  const x = (at) => left + ((at - from) / (to - from)) * plotWidth;
  const w = Math.max((bucketMs / (to - from)) * plotWidth * 0.8, 1);
  for (const bucket of buckets) {
    const finalHeight = scale(bucket.final);
    const provisionalHeight = scale(bucket.provisional);
    const title = `${fullTime.format(bucket.at)}: ${format(metric, bucket.final)} final, ${format(metric, bucket.provisional)} provisional`;
    const finalBar = svg('rect', { class: 'final', x: x(bucket.at), y: base - finalHeight, width: w, height: finalHeight });
    finalBar.append(svg('title', {}, title));
    const provisionalY = additive ? base - finalHeight - provisionalHeight : base - provisionalHeight;
    const provisionalBar = svg('rect', { class: 'provisional', x: x(bucket.at), y: provisionalY, width: w, height: provisionalHeight, opacity: additive ? 1 : 0.6 });
    provisionalBar.append(svg('title', {}, title));
    nodes.push(finalBar, provisionalBar);
  }
  nodes.push(svg('line', { class: 'axis', x1: left, x2: width - right, y1: base, y2: base }));
  for (const tick of timeTicks(from, to, plotWidth)) {
    const half = textWidth(tick.label) / 2;
    if (x(tick.at) - half < 0 || x(tick.at) + half > width) continue;
    nodes.push(svg('line', { class: 'axis', x1: x(tick.at), x2: x(tick.at), y1: base, y2: base + 4 }));
    nodes.push(svg('text', { class: 'tick', x: x(tick.at), y: height - 5, 'text-anchor': 'middle' }, tick.label));
  }
  chart.replaceChildren(...nodes);
}

const SOURCE_FIELDS = new Set(['name', 'type', 'queue', 'connected', 'accepted', 'last_error']);

function detail(value) {
  if (value === null || value === undefined) return '—';
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  if (typeof value === 'number') return Number.isInteger(value) ? whole.format(value) : rate.format(value);
  const text = typeof value === 'object' ? JSON.stringify(value) : String(value);
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

// Source types differ in what they report; fields this page does not know are listed as they come.
function sourceRow(source) {
  const extras = Object.entries(source)
    .filter(([name]) => !SOURCE_FIELDS.has(name))
    .map(([name, value]) => `${name.replaceAll('_', ' ')}: ${detail(value)}`);
  const name = el('td', {}, String(source.name ?? '—'));
  if (source.type) name.append(' ', el('span', { class: 'tag' }, detail(source.type)));
  const row = el('tr', { 'data-source': String(source.name ?? '') },
    name,
    el('td', {}, source.queue ? String(source.queue) : '—'),
    el('td', { class: source.connected ? 'ok' : 'down' }, source.connected ? 'connected' : 'disconnected'),
    el('td', { class: 'num' }, whole.format(source.accepted || 0)));
  if (!extras.length && !source.last_error) return [row];
  const details = el('td', { colspan: 4 });
  if (source.last_error) {
    details.append(el('div', { class: 'down', title: String(source.last_error) }, `last error: ${detail(source.last_error)}`));
  }
  if (extras.length) details.append(el('div', { class: 'muted' }, extras.join(' · ')));
  row.classList.add('has-details');
  return [row, el('tr', { class: 'details' }, details)];
}

function renderHealth(status) {
  const now = Date.now();
  const rejectedByReason = status.events_rejected || {};
  const rejected = Object.values(rejectedByReason).reduce((sum, n) => sum + n, 0);
  let inRate = null;
  let rejectedRates = {};
  if (state.previous) {
    const seconds = (now - state.previous.at) / 1000;
    if (seconds > 0) {
      inRate = (status.events_accepted - state.previous.accepted) / seconds;
      for (const [reason, n] of Object.entries(rejectedByReason)) {
        const perSecond = (n - (state.previous.rejected[reason] || 0)) / seconds;
        if (perSecond > 0) rejectedRates[reason] = perSecond;
      }
    }
  }
  state.previous = { at: now, accepted: status.events_accepted, rejected: { ...rejectedByReason } };
  const snapshot = status.snapshot;
  const tile = (name, value, extra = {}) => el('div', extra, el('div', { class: 'muted small' }, name), el('div', { class: 'value' }, value));
  // The total per second, and its reasons (most frequent first) on a small line under it.
  const rejectedRate = Object.values(rejectedRates).reduce((sum, n) => sum + n, 0);
  const reasons = Object.entries(rejectedRates).sort((a, b) => b[1] - a[1])
    .map(([reason, n]) => `${reason} ${rate.format(n)}/s`).join(', ');
  const sources = status.sources || [];
  const queued = sources.filter((source) => source.queue).length;
  // Only a RabbitMQ source (one with a queue) has a dead-letter queue; HTTP answers rejections to the caller.
  const rejectedName = queued === 0 ? 'rejected in all'
    : queued === sources.length ? 'rejected in all (dead-lettered)'
      : 'rejected in all (dead-lettered from queues)';
  $('health').replaceChildren(
    tile('events in', inRate === null ? '–' : `${rate.format(Math.max(inRate, 0))}/s`, { id: 'events-rate' }),
    tile('events accepted', whole.format(status.events_accepted), { id: 'events-accepted' }),
    el('div', { id: 'rejected-rate' },
      el('div', { class: 'muted small' }, 'rejected / s'),
      el('div', { class: 'value' }, `${rate.format(rejectedRate)}/s`),
      el('div', { class: 'muted small' }, reasons)),
    tile(rejectedName, whole.format(rejected), { id: 'rejected-total' }),
    recomputeTile(status),
    tile('last batch run', snapshot ? `${whole.format(snapshot.took_ms)} ms` : 'none yet', { id: 'last-run' }),
  );
  $('sources').tBodies[0].replaceChildren(...sources.flatMap(sourceRow));
  $('asof').textContent = snapshot
    ? `batch epoch ${status.batch_epoch} · snapshot ${ago(Date.parse(snapshot.created_at))} · open epoch ${status.epoch}`
    : `no snapshot yet · open epoch ${status.epoch}`;
  $('asof').setAttribute('data-batch-epoch', String(status.batch_epoch));
}

// The batch layer's state; while its runs fail, nothing expires the speed
// layer, so the tile says since when and how big the speed layer has grown.
function recomputeTile(status) {
  const failing = status.recompute_failing || { runs: 0 };
  if (!failing.runs) {
    return el('div', { id: 'recompute-state' },
      el('div', { class: 'muted small' }, 'recompute'),
      el('div', { class: 'value' }, status.recompute_running ? 'running' : 'idle'));
  }
  const groups = status.speed ? whole.format(status.speed.groups) : '–';
  return el('div', { id: 'recompute-state', title: status.recompute_error || '' },
    el('div', { class: 'muted small' }, 'recompute'),
    el('div', { class: 'value down' },
      `failing (${whole.format(failing.runs)} ${failing.runs === 1 ? 'run' : 'runs'})`),
    el('div', { class: 'muted small' },
      `since ${ago(Date.parse(failing.since))}; speed layer ${groups} groups`));
}

async function refresh() {
  if (state.busy || !state.views.length) return;
  state.busy = true;
  try {
    const name = encodeURIComponent(view().name);
    const range = rangeQuery();
    const topMetric = $('top-metric').value;
    const seriesMetric = $('series-metric').value;
    const key = state.key ? `&key=${encodeURIComponent(state.key)}` : '';
    const [merged, batch, speed, top, seriesBatch, seriesSpeed, status] = await Promise.all([
      api(`/v1/views/${name}/totals?layer=merged${range}`),
      api(`/v1/views/${name}/totals?layer=batch${range}`),
      api(`/v1/views/${name}/totals?layer=speed${range}`),
      topWithFinals(name, topMetric, range),
      api(`/v1/views/${name}/series?layer=batch${key}${range}`),
      api(`/v1/views/${name}/series?layer=speed${key}${range}`),
      api('/v1/status'),
    ]);
    renderTotals(merged, batch, speed);
    renderTop(top);
    renderSeries(seriesMetric, seriesBatch, seriesSpeed);
    renderHealth(status);
    showMessage('');
    document.body.setAttribute('data-loaded', 'true');
  } catch (error) {
    handle(error);
  } finally {
    state.busy = false;
  }
}

function refreshSoon() {
  clearTimeout(state.timer);
  refresh().finally(() => {
    clearTimeout(state.timer);
    state.timer = setTimeout(refreshSoon, REFRESH_MS);
  });
}

function handle(error) {
  if (error instanceof Unauthorized) {
    clearTimeout(state.timer);
    const refused = Boolean(state.token);
    state.token = null;
    sessionStorage.removeItem('tandem-token');
    $('main').hidden = true;
    $('login').hidden = false;
    showMessage(refused
      ? 'The token was refused (401 Unauthorized): enter the token the daemon was started with.'
      : '');
    $('token').focus();
    return;
  }
  showMessage(`Cannot reach tandem: ${error.message}`);
}

async function start() {
  try {
    const answer = await api('/v1/views');
    state.views = answer.views;
  } catch (error) {
    handle(error);
    return;
  }
  $('login').hidden = true;
  $('main').hidden = false;
  const select = $('view');
  const before = select.value;
  select.replaceChildren(...state.views.map((v) => el('option', { value: v.name }, v.name)));
  if (state.views.some((v) => v.name === before)) select.value = before;
  if (!state.views.length) {
    showMessage('This tandem has no views configured.');
    return;
  }
  onViewChange();
}

new ResizeObserver(([entry]) => {
  const { width, height } = entry.contentRect;
  if (`${Math.round(width)}x${Math.round(height)}` !== state.seriesSize) drawSeries();
}).observe($('series'));
$('view').addEventListener('change', onViewChange);
$('range').addEventListener('change', refreshSoon);
$('top-metric').addEventListener('change', refreshSoon);
$('series-metric').addEventListener('change', refreshSoon);
$('series-all').addEventListener('click', () => {
  state.key = null;
  refreshSoon();
});
$('recompute').addEventListener('click', async () => {
  const button = $('recompute');
  button.disabled = true;
  button.textContent = 'Recomputing…';
  try {
    await api('/v1/recompute?wait=true', { method: 'POST' });
  } catch (error) {
    handle(error);
  } finally {
    button.disabled = false;
    button.textContent = 'Recompute now';
    refreshSoon();
  }
});
$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  state.token = $('token').value;
  sessionStorage.setItem('tandem-token', state.token);
  $('token').value = '';
  showMessage('');
  start();
});

start();
