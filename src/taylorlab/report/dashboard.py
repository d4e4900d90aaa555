"""One self-contained HTML page over run directories (a pipeline run or a whole sweep).

No network: the data is embedded as JSON and drawn with inline SVG by a small script (hover for
values, filter by method and pattern). Sections whose stages have not run say so.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Dict, List

from taylorlab.engine.rundir import finished
from taylorlab.io import atomic_write_text
from taylorlab.report.palette import estimator_colors, method_colors
from taylorlab.report.verdicts import judge
from taylorlab.report.summary import collect_results, stage_status
from taylorlab.tracking.metrics import read_metrics

MAX_CURVE_POINTS = 200


def _read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def _curve(stage_dir: Path) -> List[List[float]]:
    by_step = {}  # after a resume a step may have been logged twice: the last write is the one kept
    for r in read_metrics(stage_dir):
        if "train/loss" in r and "step" in r and not r.get("summary"):
            by_step[r["step"]] = r["train/loss"]
    pts = [[k, v] for k, v in sorted(by_step.items())]
    if len(pts) > MAX_CURVE_POINTS:
        stride = len(pts) / MAX_CURVE_POINTS
        pts = [pts[int(i * stride)] for i in range(MAX_CURVE_POINTS)] + [pts[-1]]
    return pts


def _cache_hits(run_dir: Path) -> Dict[str, int]:
    hits: Dict[str, int] = {}
    path = run_dir / "plans.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            for name, action in rec.get("actions", {}).items():
                if action == "skip":
                    hits[name] = hits.get(name, 0) + 1
    return hits


def _done_json(run_dirs: List[Path], stage: str, artifact: str) -> List[Dict[str, Any]]:
    """The JSON artifact ``artifact`` of every finished ``stage`` (by its manifest), run by run."""
    out = []
    for rd in run_dirs:
        for sd in finished([rd], stage=stage):
            path = sd.artifact(artifact)
            data = _read_json(path) if path is not None else None
            if data:
                out.append({"run": Path(rd).name, "stage": sd.name, **data})
    return out


def collect(run_dirs: List[Path]) -> Dict[str, Any]:
    stages, curves = [], []
    for rd in run_dirs:
        rd = Path(rd)
        hits = _cache_hits(rd)
        for s in stage_status(rd):
            d = Path(s["dir"])
            manifest = _read_json(d / "manifest.json", {}) or {}
            prov = _read_json(d / "provenance.json", {}) or {}
            stages.append({
                "run": rd.name, "dir": d.name, "node": s["node"], "state": s["state"], "detail": s["detail"],
                "wall_s": manifest.get("wall_s"), "cache_hits": hits.get(d.name, 0), "log": s["log"],
                "config": (d / "config.yaml").read_text(encoding="utf-8") if (d / "config.yaml").exists() else "",
                "provenance": {k: prov.get(k) for k in ("git", "libraries", "host", "job_id", "started", "cuda")},
            })
            if s["node"] == "train" and s["state"] == "done":
                curves.append({"run": rd.name, "stage": d.name, "points": _curve(d)})
    estimates = _done_json(run_dirs, "estimate", "estimates")
    for E in estimates:
        E["judged"] = judge(E)
        E.pop("fitted", None)  # a fitted estimator's training set is for offline study, not drawn here
    return _finite({"results": collect_results(run_dirs), "stages": stages, "curves": curves,
                    "order_estimates": estimates,
                    "memorization": _done_json(run_dirs, "memorize", "memorization"),
                    "curriculum": _done_json(run_dirs, "curriculum", "curriculum"),
                    "inference": [_inference_view(i) for i in _done_json(run_dirs, "inference", "inference")],
                    "colors": {"methods": method_colors(), "estimators": estimator_colors()}})


def _inference_view(res: Dict[str, Any]) -> Dict[str, Any]:
    """What the inference table draws (a sweep's page holds every run's rows: no timing spreads)."""
    def row(r):
        out = {k: r.get(k) for k in ("model", "backend", "mode", "skipped")}
        if r.get("skipped"):
            return out
        out.update({k: r.get(k) for k in ("weight_bytes", "peak_bytes", "prefill_speedup", "decode_speedup")})
        out["prefill"] = {L: {"median_s": v["median_s"]} for L, v in (r.get("prefill") or {}).items()}
        out["decode"] = {b: {"tokens_per_s": v["tokens_per_s"]} for b, v in (r.get("decode") or {}).items()}
        c = r.get("check")
        out["check"] = c and {k: c.get(k) for k in ("rel_max_diff", "equal_within_tolerance", "tolerance")}
        return out

    recipe = res.get("recipe") or {}
    return {"run": res["run"], "stage": res["stage"], "gpu": res.get("gpu"), "device": res.get("device"),
            "dtype": res.get("dtype"), "lengths_not_measured": res.get("lengths_not_measured") or [],
            "recipe": {"method": recipe.get("method"), "pattern": recipe.get("pattern")},
            "rows": [row(r) for r in res.get("rows", [])]}


def _finite(obj):
    """NaN and infinities become null: JSON.parse in the browser rejects them."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}h1{margin-bottom:.2em}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;font-size:14px}
td,th{border:1px solid #ccc;padding:3px 8px}td.num{text-align:right}.done{color:#070}.failed{color:#a00}
.empty{color:#777;font-style:italic}.filters label{margin-right:1em}svg text{font-size:11px}
.best{font-weight:bold;background:#e8f5e9}td.flagged{background:#fdecea;color:#a00}
.verdict.ranks{color:#070;font-weight:bold}.verdict.does-not-rank{color:#a00;font-weight:bold}.why{font-size:11px;color:#555;font-weight:normal}details pre{background:#f6f6f6;padding:.5em;max-width:90em;overflow:auto}
"""

_SCRIPT = r"""
const D = JSON.parse(document.getElementById('taylorlab-data').textContent);
const COLORS = D.colors.methods;
const NS = 'http://www.w3.org/2000/svg';
function el(tag, attrs, parent, text){const e=document.createElementNS(NS,tag);for(const k in attrs)e.setAttribute(k,attrs[k]);if(text!==undefined)e.textContent=text;if(parent)parent.appendChild(e);return e;}
function h(tag, attrs, parent, text){const e=document.createElement(tag);for(const k in (attrs||{}))e.setAttribute(k,attrs[k]);if(text!==undefined)e.textContent=text;if(parent)parent.appendChild(e);return e;}
function empty(id, why){const p=h('p',{class:'empty'},document.getElementById(id),why);}
function chart(container, series, xlabel, ylabel, logy){
  const W=640,H=320,L=60,R=150,T=10,B=40; const svg=el('svg',{width:W,height:H,role:'img'},container);
  const pts=series.flatMap(s=>s.points); if(!pts.length) return svg;
  const xs=pts.map(p=>p[0]), ys=pts.map(p=>logy?Math.log10(p[1]):p[1]);
  let x0=Math.min(...xs),x1=Math.max(...xs),y0=Math.min(...ys),y1=Math.max(...ys); if(x0==x1){x0-=0.5;x1+=0.5;} if(y0==y1){y0-=0.5;y1+=0.5;}
  const sx=x=>L+(x-x0)/(x1-x0)*(W-L-R), sy=y=>H-B-((logy?Math.log10(y):y)-y0)/(y1-y0)*(H-T-B);
  el('line',{x1:L,y1:H-B,x2:W-R,y2:H-B,stroke:'#888'},svg); el('line',{x1:L,y1:T,x2:L,y2:H-B,stroke:'#888'},svg);
  for(let i=0;i<=4;i++){const v=y0+(y1-y0)*i/4; el('text',{x:4,y:sy(logy?Math.pow(10,v):v)+4},svg,(logy?Math.pow(10,v):v).toPrecision(3));
    const xv=x0+(x1-x0)*i/4; el('text',{x:sx(xv)-10,y:H-B+15},svg,xv.toPrecision(3));}
  el('text',{x:(W-R)/2,y:H-5},svg,xlabel); el('text',{x:4,y:T+2},svg,'');
  series.forEach((s,i)=>{const g=el('g',{class:'series','data-name':s.name},svg);
    const d=s.points.map((p,j)=>(j?'L':'M')+sx(p[0]).toFixed(1)+','+sy(p[1]).toFixed(1)).join(' ');
    el('path',{d:d,fill:'none',stroke:s.color||'#555','stroke-width':1.5,'stroke-dasharray':s.dash||''},g);
    s.points.forEach(p=>{const c=el('circle',{cx:sx(p[0]),cy:sy(p[1]),r:s.points.length>60?1.2:4,fill:s.color||'#555',class:'point','data-x':p[0],'data-y':p[1]},g);
      el('title',{},c,s.name+': '+xlabel+'='+p[0]+', '+ylabel+'='+Number(p[1]).toFixed(3));});
    el('text',{x:W-R+8,y:T+14+14*i,fill:s.color||'#555'},svg,s.name);});
  return svg;
}
function selected(name){return [...document.querySelectorAll('input[data-filter='+name+']:checked')].map(e=>e.value);}
function drawSparsity(){
  const box=document.getElementById('sparsity-chart'); box.innerHTML='';
  const R=D.results.filter(r=>r.split==='test'||!r.split);
  if(!R.length){empty('sparsity-chart','No evaluate stage has finished yet (run evaluate_dense / evaluate_pruned).');return;}
  const methods=selected('method'), patterns=selected('pattern'), sparsities=selected('sparsity'); const many=new Set(R.map(r=>r.run)).size>1;
  const groups={}; R.filter(r=>r.method!=='dense'&&methods.includes(r.method)&&patterns.includes(String(r.pattern))&&sparsities.includes(String(r.sparsity))).forEach(r=>{
    const k=JSON.stringify([r.run,r.method,String(r.pattern)]); (groups[k]=groups[k]||[]).push([r.sparsity,r.ppl]);});
  const series=Object.entries(groups).map(([k,p])=>{const [run,m,pat]=JSON.parse(k);
    const dense=R.find(r=>r.method==='dense'&&r.run===run); if(dense) p=[[0,dense.ppl],...p]; p.sort((a,b)=>a[0]-b[0]);
    return {name:(many?run+' ':'')+m+' '+pat,points:p,color:COLORS[m]||'#555',dash:pat==='unstructured'?'':'4 3'};});
  if(!series.length) R.filter(r=>r.method==='dense').forEach(d=>series.push({name:d.run+' dense',points:[[0,d.ppl]],color:'#000'}));
  chart(box,series,'sparsity','perplexity',true);
}
function drawTable(){
  const box=document.getElementById('method-table'); const R=D.results;
  if(!R.length){empty('method-table','No evaluate stage has finished yet.');return;}
  const cols=[...new Set(R.filter(r=>r.method!=='dense').map(r=>r.pattern+' @'+r.sparsity))].sort();
  const t=h('table',{id:'method-pattern-table'},box);
  const hr=h('tr',{},t); h('th',{},hr,'run'); h('th',{},hr,'method'); h('th',{},hr,'model'); h('th',{},hr,'calibration'); cols.forEach(c=>h('th',{},hr,c+' (ppl, ×dense)'));
  [...new Set(R.map(r=>r.run))].forEach(run=>{const RR=R.filter(r=>r.run===run); const dense=RR.find(r=>r.method==='dense');
    const best={}; cols.forEach(c=>{best[c]=Math.min(...RR.filter(r=>r.pattern+' @'+r.sparsity===c).map(r=>r.ppl));});
    [...new Set(RR.map(r=>r.method))].forEach(m=>{const tr=h('tr',{'data-method':m,'data-run':run},t); h('td',{},tr,run); h('td',{},tr,m);
      const one=RR.find(r=>r.method===m); h('td',{},tr,one.model||''); h('td',{},tr,m==='dense'?'–':(one.calibration||''));
      if(m==='dense'){h('td',{class:'num',colspan:Math.max(cols.length,1)},tr,dense.ppl.toFixed(3));return;}
      cols.forEach(c=>{const r=RR.find(r=>r.method===m&&r.pattern+' @'+r.sparsity===c);
        h('td',{class:'num'+(r&&r.ppl===best[c]?' best':'')},tr, r?(r.ppl.toFixed(3)+(dense?'  ×'+(r.ppl/dense.ppl).toFixed(2):'')):'–');});});});
}
function drawCurves(){
  const box=document.getElementById('training-chart');
  if(!D.curves.length){empty('training-chart','No train stage has finished (pretrained models are not trained here).');return;}
  chart(box,D.curves.map((c,i)=>({name:c.run+'/'+c.stage,points:c.points,color:['#1f77b4','#ff7f0e','#2ca02c','#d62728'][i%4]})),'step','train loss',false);
}
function drawStages(){
  const t=h('table',{id:'stage-table'},document.getElementById('stages'));
  const hr=h('tr',{},t); ['run','stage','state','wall s','cache hits','detail','log','config & provenance'].forEach(x=>h('th',{},hr,x));
  D.stages.forEach(s=>{const tr=h('tr',{},t); h('td',{},tr,s.run); h('td',{},tr,s.dir); h('td',{class:s.state.split(' ')[0]},tr,s.state);
    h('td',{class:'num'},tr,s.wall_s==null?'':s.wall_s.toFixed(1)); h('td',{class:'num'},tr,String(s.cache_hits)); h('td',{},tr,s.detail);
    const a=h('a',{href:'file://'+s.log},h('td',{},tr),'stage.log');
    const det=h('details',{},h('td',{},tr)); h('summary',{},det,'show'); h('pre',{},det,s.config+'\n'+JSON.stringify(s.provenance,null,1));});
}
function filters(){
  const box=document.getElementById('filters'); const R=D.results.filter(r=>r.method!=='dense');
  [['method',[...new Set(R.map(r=>r.method))]],['pattern',[...new Set(R.map(r=>String(r.pattern)))]],
   ['sparsity',[...new Set(R.map(r=>String(r.sparsity)))]]].forEach(([name,vals])=>{
    vals.forEach(v=>{const l=h('label',{},box); const i=h('input',{type:'checkbox',value:v,'data-filter':name,checked:''},l); l.append(' '+(name==='sparsity'?'@'+v:v)); i.addEventListener('change',drawSparsity);});});
}
filters(); drawSparsity(); drawTable(); drawCurves(); drawStages();
function drawOrders(){
  const box=document.getElementById('order-scatter');
  if(!D.order_estimates.length){empty('order-scatter','No estimate stage (record -> estimate) is part of these runs.');return;}
  const names=[...new Set(D.order_estimates.flatMap(E=>E.fidelity.map(r=>r.estimator)))];
  const fb=h('div',{class:'filters',id:'estimator-filters'},box);
  names.forEach(n=>{const l=h('label',{},fb); const i=h('input',{type:'checkbox',value:n,'data-filter':'estimator',checked:''},l); l.append(' '+n);
    i.addEventListener('change',()=>document.querySelectorAll('#order-scatter g.series').forEach(g=>{
      g.style.display=(g.dataset.name==='perfect'||selected('estimator').includes(g.dataset.name))?'':'none';}));});
  D.order_estimates.forEach(E=>{
    h('h3',{},box,E.run+' / '+E.stage+' — K='+E.speed.K+' random orders, T='+E.speed.T);
    const t=h('table',{class:'fidelity'},box); const hr=h('tr',{},t);
    ['estimator','verdict','Spearman','Pearson','mean |PPL est − true|','÷ no change','rel. parameter error','absurd estimates','wall s','predicted s','s / query','peak GiB','× one retraining','orders scored','÷ batched retraining of those'].forEach(x=>h('th',{},hr,x));
    const f=v=>v==null?'–':Number(v).toPrecision(3); const J=E.judged||{verdicts:{},flags:{},plot:{}};
    E.fidelity.forEach(r=>{const tr=h('tr',{'data-estimator':r.estimator},t); const V=J.verdicts[r.estimator]||{verdict:'not checked',why:''};
      const F=J.flags[r.estimator]||{absurd:0}; h('td',{},tr,r.estimator+(F.relative?' (relative)':''));
      const vt=h('td',{class:'verdict '+V.verdict.replace(/ /g,'-'),title:V.why},tr,V.verdict); h('div',{class:'why'},vt,V.why);
      [r.spearman,r.pearson].forEach(v=>h('td',{class:'num'},tr,f(v)));
      [r.mae_ppl,r.mae_ratio_to_none].forEach(v=>h('td',{class:'num'},tr,F.relative?'(relative)':f(v)));
      h('td',{class:'num'},tr,f(r.rel_param_error)); h('td',{class:'num'+(F.absurd?' flagged':'')},tr,String(F.absurd||0));
      [r.wall_s,r.predicted_s,r.s_per_query,r.peak_gib,r.retrainings_equivalent,r.orders_scored,r.cost_vs_batched_retrain].forEach(v=>h('td',{class:'num'},tr,f(v)));});
    if(E.cost_prediction) h('p',{class:'advisor'},box,'Cost advisor, before the run (from probed passes on '+E.cost_prediction.units.device+'): batched retraining of these orders '+f(E.cost_prediction.retrain_batched_s)+' s predicted, '+f(E.speed.batched_retrain_s_per_order*(E.orders.length))+' s measured; each estimator\'s prediction is the "predicted s" column beside its measured wall time.');
    h('p',{},box,'Ground truth: real retraining ('+f(E.speed.retrain_batched_orders_per_s)+' orders/s batched, '+f(E.speed.retrain_one_at_a_time_orders_per_s)+' one at a time). Points: estimated vs true validation perplexity per order; the diagonal is a perfect estimate.');
    (E.sensitivity||[]).forEach(x=>h('p',{class:'sensitivity'},box,'The truth against itself: the random orders retrained from initial weights nudged by '+Number(x.relative_perturbation).toExponential()+' (relative) rank with Spearman '+f(x.spearman_true_vs_perturbed)+' against the unnudged truth; their final weights moved by '+f(x.median_rel_param_difference)+' of the training displacement (median). No estimator built from one run ranks better than this.'));
    Object.entries(E.linearisation||{}).forEach(([k,x])=>h('p',{class:'linearisation','data-estimator':k},box,k+' checked itself (no retraining): along the estimated runs its linearised gradient misses '+f(x.median_residual)+' of the change of the exact gradient'+(x.curvature&&x.curvature!=='hvp'&&x.median_first_order!=null?' (the exact first-order expansion: '+f(x.median_first_order)+')':'')+' (median of '+x.checks.length+' checks; 0 is exact, 1 no better than ignoring curvature; above 0.5 compare it with retraining before trusting its ranking: every from-scratch benchmark run failed there, continued training from a checkpoint still ranked up to 0.83).'));
    Object.entries(E.proposals||{}).forEach(([k,a])=>h('p',{class:'proposal','data-estimator':k},box,k+' proposed an order ('+(a.how||'its optimum')+(a.search_orders?'; '+a.search_orders+' random orders scored in '+f(a.search_score_s)+' s':'')+(a.precompute_s!=null?' after a '+f(a.precompute_s)+' s precompute':'')+'); retrained for real: validation loss '+f(a.true_loss)+' against '+f(a.random_true_loss_median)+' for the median and '+f(a.random_true_loss_min)+' for the best of the random orders.'));
    const cols=D.colors.estimators;
    const series=E.fidelity.map(r=>({name:r.estimator+((J.flags[r.estimator]||{}).relative?' (relative)':''),color:cols[r.estimator]||'#555',dash:'0 10000',
      points:E.orders.map((o,i)=>[Math.exp(o.true_loss),(J.plot[r.estimator]||[])[i]]).filter(p=>p[1]!=null).map(p=>[p[0],Math.exp(p[1])]).filter(p=>isFinite(p[1]))}));
    const off=E.fidelity.filter(r=>(J.flags[r.estimator]||{}).absurd).map(r=>r.estimator+': '+J.flags[r.estimator].absurd);
    if(off.length) h('p',{class:'flagged-note'},box,'Kept off the scatter (not finite, a negative loss, or more than '+10+' nats from the truth): '+off.join(', ')+'.');
    const all=E.orders.map(o=>Math.exp(o.true_loss)); series.push({name:'perfect',color:'#ccc',points:[[Math.min(...all),Math.min(...all)],[Math.max(...all),Math.max(...all)]]});
    chart(box,series,'true perplexity','estimated perplexity',true);});
}
drawOrders();
function heat(box, title, m, rows, cols, lo, hi, diverging){
  const C=34, L=40, T=30; const svg=el('svg',{width:L+C*cols.length+10,height:T+C*rows.length+30,role:'img'},box);
  el('text',{x:L,y:14},svg,title);
  const color=v=>{if(v==null)return '#eee'; let t=(v-lo)/((hi-lo)||1); t=Math.max(0,Math.min(1,t));
    return diverging?`rgb(${Math.round(255*Math.min(1,2*t))},${Math.round(255*(1-Math.abs(2*t-1)))},${Math.round(255*Math.min(1,2-2*t))})`
                    :`hsl(${Math.round(260-220*t)},70%,${Math.round(30+40*t)}%)`;};
  rows.forEach((i,a)=>{el('text',{x:L-6,y:T+C*a+C/2+4,'text-anchor':'end'},svg,String(i));
    cols.forEach((j,b)=>{const v=m[i][j]; const r=el('rect',{x:L+C*b,y:T+C*a,width:C-2,height:C-2,fill:color(v),'data-i':i,'data-j':j},svg);
      el('title',{},r,'batch '+i+' at position '+j+': '+(v==null?'–':v.toPrecision(5)));});});
  cols.forEach((j,b)=>el('text',{x:L+C*b+C/2,y:T+C*rows.length+14,'text-anchor':'middle'},svg,String(j)));
}
function drawMemorization(){
  const box=document.getElementById('memorization');
  if(!D.memorization.length){empty('memorization','No memorize stage (record -> memorize) is part of these runs.');return;}
  D.memorization.forEach(M=>{
    const f=v=>v==null?'–':Number(v).toPrecision(3);
    const rows=[...new Set(M.cells.map(c=>c[0]))].sort((a,b)=>a-b), cols=[...new Set(M.cells.map(c=>c[1]))].sort((a,b)=>a-b);
    [['loss on batch i (rows) at the end with batch i moved to position j (columns)',M,'memorization'],
     ['held-out loss at the end with batch i (rows) moved to position j (columns)',M.generalization,'generalization']].forEach(([what,G,kind])=>{
      if(!G) return;
      h('h3',{},box,M.run+' / '+M.stage+' — '+what+', T='+M.T);
      if(G.true) h('p',{},box,M.estimator+': MAE '+f(G.mae)+' against '+f(G.mae_no_change)+' for "no change"; Spearman '+f(G.spearman)+' over '+M.cells.length+' cells.');
      const vals=M.cells.flatMap(c=>[G.estimated[c[0]][c[1]]].concat(G.true?[G.true[c[0]][c[1]]]:[])).filter(v=>v!=null);
      const lo=Math.min(...vals), hi=Math.max(...vals); const wrap=h('div',{class:'heatmaps','data-kind':kind},box);
      heat(wrap,'estimated ('+M.estimator+')',G.estimated,rows,cols,lo,hi,false);
      if(G.true){heat(wrap,'true (retrained)',G.true,rows,cols,lo,hi,false);
        const diff=G.estimated.map((r,i)=>r.map((v,j)=>v==null||G.true[i][j]==null?null:v-G.true[i][j]));
        const a=Math.max(1e-12,...M.cells.map(c=>Math.abs(diff[c[0]][c[1]]||0))); heat(wrap,'estimated − true',diff,rows,cols,-a,a,true);}
    });
  });
}
function drawCurriculum(){
  const box=document.getElementById('curriculum');
  if(!D.curriculum.length){empty('curriculum','No curriculum stage (record -> curriculum) is part of these runs.');return;}
  D.curriculum.forEach(C=>{
    const f=v=>v==null?'–':Number(v).toPrecision(5);
    h('h3',{},box,C.run+' / '+C.stage+' — candidates ranked by '+C.estimator+'; '+C.verified+' retrained');
    h('p',{},box,'Recommended (best verified): '+C.best+', validation loss '+f(C.best_true_loss)+' against '+f(C.reference_true_loss)+' for the reference order (gain '+f(C.gain_vs_reference)+' nats).');
    const t=h('table',{class:'curriculum'},box); const hr=h('tr',{},t);
    ['rank by estimate','candidate','estimated loss','true loss (retrained)'].forEach(x=>h('th',{},hr,x));
    [...C.candidates].sort((a,b)=>a.rank_by_estimate-b.rank_by_estimate).forEach(r=>{
      const tr=h('tr',{class:r.name===C.best?'best':''},t); h('td',{class:'num'},tr,String(r.rank_by_estimate));
      h('td',{},tr,r.name); h('td',{class:'num'},tr,f(r.estimated_loss)); h('td',{class:'num'},tr,f(r.true_loss));});
  });
}
function drawInference(){
  const box=document.getElementById('inference');
  if(!D.inference.length){empty('inference','No inference stage (prune -> inference) is part of these runs.');return;}
  const ms=v=>v==null?'–':(1e3*v).toFixed(2), x=v=>v==null?'–':v.toFixed(2)+'×', mb=v=>v==null?'–':(v/2**20).toFixed(1);
  D.inference.forEach(I=>{
    const r0=I.rows.find(r=>!r.skipped)||{prefill:{},decode:{}}; const Ls=Object.keys(r0.prefill), Bs=Object.keys(r0.decode||{});
    h('h3',{},box,I.run+' / '+I.stage+' — '+(I.recipe.method||'')+' '+(I.recipe.pattern||'')+' on '+(I.gpu||I.device)+', '+I.dtype);
    const t=h('table',{class:'inference'},box); const hr=h('tr',{},t);
    ['model','backend','mode'].concat(Ls.map(L=>'prefill '+L+' tok (ms, ×dense)')).concat(Bs.map(b=>'decode b'+b+' (tok/s, ×dense)'))
      .concat(['weights MiB','peak MiB','logits vs dense (rel.)']).forEach(c=>h('th',{},hr,c));
    I.rows.forEach(r=>{const tr=h('tr',{'data-backend':r.backend,'data-mode':r.mode},t);
      [r.model,r.backend,r.mode].forEach(v=>h('td',{},tr,v));
      if(r.skipped){h('td',{class:'empty',colspan:Ls.length+Bs.length+3},tr,'not measured: '+r.skipped);return;}
      Ls.forEach(L=>{const sp=(r.prefill_speedup||{})[L]; h('td',{class:'num'+(sp>1?' best':'')},tr,ms((r.prefill[L]||{}).median_s)+'  '+x(sp));});
      Bs.forEach(b=>{const d=(r.decode||{})[b], sp=(r.decode_speedup||{})[b]; h('td',{class:'num'+(sp>1?' best':'')},tr,(d&&d.tokens_per_s!=null?d.tokens_per_s.toFixed(1):'–')+'  '+x(sp));});
      h('td',{class:'num'},tr,mb(r.weight_bytes)); h('td',{class:'num'},tr,mb(r.peak_bytes));
      const c=r.check; h('td',{class:'num'+(c&&!c.equal_within_tolerance?' flagged':'')},tr,c?c.rel_max_diff.toExponential(2)+(c.equal_within_tolerance?' ✓':' ✗'):'reference');});
    h('p',{},box,'×dense: against the dense model run the same way (eager or CUDA graph). Each 2:4 row\'s logits are compared with the pruned model\'s dense logits (tolerance '+((I.rows.find(r=>r.check)||{}).check||{}).tolerance+').'+(I.lengths_not_measured.length?' Prompt lengths beyond the model\'s context, not measured: '+I.lengths_not_measured.join(', ')+'.':''));
  });
}
drawMemorization(); drawCurriculum(); drawInference();
document.body.setAttribute('data-render-ms',String(Math.round(performance.now())));
document.body.setAttribute('data-ready','1');
"""


def render(run_dirs: List[Path], title: str = "taylorlab results") -> str:
    data = collect(run_dirs)
    blob = json.dumps(data, default=str).replace("</", "<\\/")
    runs = ", ".join(html.escape(Path(r).name) for r in run_dirs)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1><p>Runs: {runs} · {len(data['results'])} evaluations · {len(data['stages'])} stage directories</p>
<h2>Pruning: perplexity against sparsity</h2><div class="filters" id="filters"></div><div id="sparsity-chart"></div>
<h2>Method × pattern against the dense model</h2><div id="method-table"></div>
<h2>Training-order estimates against retraining</h2><div id="order-scatter"></div>
<h2>Memorization by position (estimated beside true)</h2><div id="memorization"></div>
<h2>Curricula</h2><div id="curriculum"></div>
<h2>Inference: dense against pruned at serving time</h2><div id="inference"></div>
<h2>Training curves</h2><div id="training-chart"></div>
<h2>Stages</h2><div id="stages"></div>
<script type="application/json" id="taylorlab-data">{blob}</script>
<script>{_SCRIPT}</script></body></html>"""


def write_dashboard(run_dirs: List[Path], path: Path, title: str = "taylorlab results") -> Path:
    """The self-contained results page over ``run_dirs``, written atomically."""
    atomic_write_text(path, render([Path(r) for r in run_dirs], title))
    return path


write_html = write_dashboard
