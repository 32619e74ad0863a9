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

function renderTop(top) {
  const metric = metricOf(top.metric);
  const values = top.items.map((item) => item.metrics[top.metric] || 0);
  const max = Math.max(...values, 0);
  const rows = top.items.map((item, i) => {
    const value = item.metrics[top.metric];
    const row = el('tr', { 'data-key': item.key, 'data-value': String(value) },
      el('td', {}, String(i + 1)),
      el('td', { class: 'key' }, item.key),
      el('td', { class: 'num value' }, format(metric, value)),
      el('td', { class: 'bar-cell' }, el('div', { class: 'bar', style: `width:${max > 0 ? (100 * (value || 0)) / max : 0}%` })));
    if (item.key === state.key) row.classList.add('selected');
    row.addEventListener('click', () => {
      state.key = item.key;
      refreshSoon();
    });
    return row;
  });
  $('top').tBodies[0].replaceChildren(...rows);
}

function renderSeries(metricName, batch, speed) {
  const metric = metricOf(metricName);
  const additive = ADDITIVE.has(metric.agg);
  const byStart = new Map();
  for (const [layer, answer] of [['final', batch], ['provisional', speed]]) {
    for (const bucket of answer.buckets) {
      const entry = byStart.get(bucket.start) || { start: bucket.start, final: 0, provisional: 0 };
      entry[layer] = bucket.metrics[metricName] || 0;
      byStart.set(bucket.start, entry);
    }
  }
  const buckets = [...byStart.values()].sort((a, b) => a.start.localeCompare(b.start)).slice(-120);
  const chart = $('series');
  const [width, height, left, bottom] = [600, 220, 48, 18];
  const top = Math.max(...buckets.map((b) => (additive ? b.final + b.provisional : Math.max(b.final, b.provisional))), 0);
  const nodes = [];
  for (const fraction of [0, 0.5, 1]) {
    const y = height - bottom - fraction * (height - bottom - 8);
    nodes.push(svg('line', { x1: left, x2: width, y1: y, y2: y }));
    nodes.push(svg('text', { x: 2, y: y + 4 }, format(metric, fraction * top)));
  }
  const slot = (width - left) / Math.max(buckets.length, 1);
  const scale = (value) => (top > 0 ? (value / top) * (height - bottom - 8) : 0);
  buckets.forEach((bucket, i) => {
    const x = left + i * slot + slot * 0.1;
    const w = Math.max(slot * 0.8, 1);
    const finalHeight = scale(bucket.final);
    const provisionalHeight = scale(bucket.provisional);
    const base = height - bottom;
    const title = `${bucket.start}: ${format(metric, bucket.final)} final, ${format(metric, bucket.provisional)} provisional`;
    const finalBar = svg('rect', { class: 'final', x, y: base - finalHeight, width: w, height: finalHeight });
    finalBar.append(svg('title', {}, title));
    nodes.push(finalBar);
    const provisionalY = additive ? base - finalHeight - provisionalHeight : base - provisionalHeight;
    const provisionalBar = svg('rect', { class: 'provisional', x, y: provisionalY, width: w, height: provisionalHeight, opacity: additive ? 1 : 0.6 });
    provisionalBar.append(svg('title', {}, title));
    nodes.push(provisionalBar);
  });
  if (buckets.length > 0) {
    nodes.push(svg('text', { x: left, y: height - 4 }, buckets[0].start.slice(0, 16).replace('T', ' ')));
    nodes.push(svg('text', { x: width - 110, y: height - 4 }, buckets[buckets.length - 1].start.slice(0, 16).replace('T', ' ')));
  }
  chart.replaceChildren(...nodes);
  chart.setAttribute('data-buckets', String(buckets.length));
  $('series-key').textContent = state.key || 'all keys';
  $('series-all').hidden = !state.key;
  $('series-note').textContent = buckets.length === 0
    ? 'No buckets in this range.'
    : additive
      ? `${buckets.length} buckets; final (batch) below, provisional (speed) stacked on top.`
      : `${buckets.length} buckets; ${metric.agg} is not additive, so each layer is drawn on its own.`;
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
  const reasons = Object.entries(rejectedRates).map(([reason, n]) => `${reason} ${rate.format(n)}/s`).join(', ');
  $('health').replaceChildren(
    tile('events in', inRate === null ? '–' : `${rate.format(Math.max(inRate, 0))}/s`, { id: 'events-rate' }),
    tile('events accepted', whole.format(status.events_accepted), { id: 'events-accepted' }),
    tile('rejected / s', reasons || '0', { id: 'rejected-rate' }),
    tile('rejected in all (dead letters)', whole.format(rejected), { id: 'rejected-total' }),
    tile('recompute', status.recompute_running ? 'running' : 'idle', { id: 'recompute-state' }),
    tile('last batch run', snapshot ? `${whole.format(snapshot.took_ms)} ms` : 'none yet', { id: 'last-run' }),
  );
  $('sources').tBodies[0].replaceChildren(...status.sources.map((source) => el('tr', {},
    el('td', {}, source.name),
    el('td', {}, source.queue || '–'),
    el('td', { class: source.connected ? 'ok' : 'down' }, source.connected ? 'connected' : 'disconnected'),
    el('td', { class: 'num' }, whole.format(source.accepted || 0)))));
  $('asof').textContent = snapshot
    ? `batch epoch ${status.batch_epoch} · snapshot ${ago(Date.parse(snapshot.created_at))} · open epoch ${status.epoch}`
    : `no snapshot yet · open epoch ${status.epoch}`;
  $('asof').setAttribute('data-batch-epoch', String(status.batch_epoch));
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
      api(`/v1/views/${name}/top?metric=${encodeURIComponent(topMetric)}&n=10${range}`),
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
