"""POST /restore: check everything a worker would trip on, then admit the job (202 + Location).

Nothing is stored or enqueued unless the spec, the image and the mask all pass; each refusal says
what to fix.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

import anyio
from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Response, UploadFile
from pydantic import ValidationError

from contract.jobs import ModelInfo
from contract.settings import Settings, split
from contract.spec import Shape, TaskSpec
from contract.tiling import TilePlan
from service.auth import Caller, CallerDep
from service.auth import caller as caller_dependency
from service.deps import StoreDep
from service.jobs import Admission, IdempotencyConflict, JobStore
from service.schemas import Error, Estimate, Job, describe_error
from service.uploads import CheckedImage, check_image

router = APIRouter(tags=["restore"])
DECODERS = anyio.CapacityLimiter(2)  # uploads decoded at once

SPEC_HELP = (
    'task spec as JSON, e.g. {"degradations": [{"op": "downsample", "factor": 4}], "steps": 100}'
)
PARTS_HELP = (
    "POST /restore takes multipart/form-data (curl -F): image (a file), spec (a text field, "
    "JSON) and, for inpainting, mask (a file)"
)


async def multipart_only(content_type: Annotated[str, Header()] = "") -> None:
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, f"{PARTS_HELP}; got {content_type or 'no Content-Type'}")


@router.post(
    "/restore",
    status_code=202,
    dependencies=[Depends(multipart_only)],
    responses={
        401: {"model": Error},
        409: {"model": Error},
        413: {"model": Error},
        415: {"model": Error},
        422: {"model": Error},
        429: {"model": Error},
        503: {"model": Error},
    },
)
async def restore(
    response: Response,
    store: StoreDep,
    caller: CallerDep,
    image: Annotated[
        UploadFile | None, File(description="the degraded image y (PNG/JPEG/WebP)")
    ] = None,
    spec: Annotated[str | None, Form(description=SPEC_HELP)] = None,
    mask: Annotated[UploadFile | None, File(description="inpainting mask, white = known")] = None,
    webhook: Annotated[
        str | None, Form(description="URL called with the job record when the job ends")
    ] = None,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=200, description="scoped to the API key")
    ] = None,
) -> Job:
    """Admit a restoration job; `Location` points at its record."""
    webhook = _check_webhook(store.settings, caller, webhook)
    admission = await _check(store, caller, image, spec, mask, webhook)
    try:
        job_id, record = await store.admit(admission, idempotency_key)
    except IdempotencyConflict as err:
        raise HTTPException(422, str(err)) from err
    record = record or await store.get(job_id, caller.owner)
    if record is None:  # a replay racing the first request, or of a job that has expired
        raise HTTPException(
            409, "the job of this Idempotency-Key is being admitted or has expired; retry later"
        )
    response.headers["Location"] = f"/jobs/{job_id}"
    return Job.from_record(job_id, record)


def _check_webhook(settings: Settings, caller: Caller, url: str | None) -> str | None:
    """The webhook URL if it may be called: http(s), to a host of DDNM_WEBHOOK_HOSTS, with a
    secret to sign it; else 422 saying why."""
    if url is None:
        return None
    hosts = split(settings.webhook_hosts)
    if not hosts:
        raise HTTPException(422, "webhook: webhooks are not enabled on this service")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
        raise HTTPException(422, "webhook: send an http:// or https:// URL")
    if parts.hostname not in hosts:
        raise HTTPException(422, f"webhook: host {parts.hostname!r} is not one of {hosts}")
    if not caller.secret:
        raise HTTPException(
            422, "webhook: an open API signs webhooks with DDNM_WEBHOOK_SECRET, which is not set"
        )
    return url


@router.post(
    "/restore/estimate",
    dependencies=[Depends(multipart_only), Depends(caller_dependency)],
    responses={413: {"model": Error}, 415: {"model": Error}, 422: {"model": Error}},
)
async def estimate(
    store: StoreDep,
    image: Annotated[UploadFile | None, File(description="the degraded image y")] = None,
    spec: Annotated[str | None, Form(description=SPEC_HELP)] = None,
) -> Estimate:
    """What `POST /restore` would admit for this image and spec, without admitting it: the
    restored size, the tiling plan and the predicted network evaluations (the mask is not
    needed yet). The same refusals as `POST /restore`."""
    sized = await _sized(store, image, spec)
    return Estimate(
        spec=sized.spec.model_copy(update={"model": sized.info.name}),
        width=sized.x_shape[2],
        height=sized.x_shape[1],
        plan=None if sized.plan is None else sized.plan.summary(),
        predicted_evaluations=sized.cost,
        budget=store.settings.max_network_evaluations,
    )


@dataclass(frozen=True)
class _Sized:
    """A spec and an upload checked against the model: the restored shape, its plan, its cost."""

    spec: TaskSpec
    info: ModelInfo
    checked: CheckedImage
    x_shape: Shape
    plan: TilePlan | None
    cost: int


async def _sized(store: JobStore, image: UploadFile | None, spec_text: str | None) -> _Sized:
    if spec_text is None:
        raise HTTPException(422, f"spec: missing; send the {SPEC_HELP} as form field 'spec'")
    spec = _parse_spec(spec_text)
    if image is None:
        raise HTTPException(422, "image: missing; send the degraded image as file field 'image'")
    info = await _model(store, spec)
    checked = await _read(store, "image", image)
    return _Sized(spec, info, checked, *_geometry(store.settings, spec, info, checked))


async def _check(
    store: JobStore,
    caller: Caller,
    image: UploadFile | None,
    spec_text: str | None,
    mask: UploadFile | None,
    webhook: str | None,
) -> Admission:
    sized = await _sized(store, image, spec_text)
    spec, info, checked, x_shape = sized.spec, sized.info, sized.checked, sized.x_shape
    plan, cost = sized.plan, sized.cost
    mask_bytes = await _check_mask(store, spec, x_shape, mask)
    seed = spec.seed if spec.seed is not None else secrets.randbelow(2**31)
    digest = hashlib.sha256(spec.model_dump_json().encode())
    for part in (checked.data, mask_bytes or b"", (webhook or "").encode()):
        digest.update(hashlib.sha256(part).digest())
    return Admission(
        spec=spec.model_copy(update={"model": info.name, "seed": seed}),
        image=checked.data,
        mask=mask_bytes,
        upload_sha256=digest.hexdigest(),
        size=(x_shape[1], x_shape[2]),
        plan=None if plan is None else plan.summary(),
        predicted_evaluations=cost,
        owner=caller.owner,
        webhook=webhook,
    )


def _geometry(
    settings: Settings, spec: TaskSpec, info: ModelInfo, checked: CheckedImage
) -> tuple[Shape, TilePlan | None, int]:
    """The restored size (from the upload), its window plan on the model, its predicted cost;
    422 / 413 saying what to change when the size, the chain's tiling or the cost does not fit."""
    n = info.image_size
    try:
        x_shape = spec.x_shape((checked.height, checked.width))
    except ValueError as err:
        what = "clean image" if spec.evaluate else "degraded image"
        raise HTTPException(
            422, f"image: a {checked.width}x{checked.height} {what} does not fit the chain: {err}"
        ) from err
    pixels = x_shape[1] * x_shape[2]
    if pixels > settings.max_output_pixels:
        raise HTTPException(
            413,
            f"image: the restored image would be {x_shape[2]}x{x_shape[1]} = {pixels} pixels, "
            f"over the limit of {settings.max_output_pixels}; send a smaller image",
        )
    try:
        plan = spec.plan(x_shape, n)
    except ValueError as err:
        raise HTTPException(422, f"spec: {err} (model {info.name!r} restores {n}x{n})") from err
    cost = spec.network_evaluations(x_shape, n, plan)
    if cost > settings.max_network_evaluations:
        windows = len(plan.boxes) if plan else "whole-image"
        raise HTTPException(
            422,
            f"spec: this job needs a predicted {cost} network evaluations ({windows} windows of "
            f"{n}x{n} x {spec.network_calls} calls per run x {spec.samples} samples), over the "
            f"budget of {settings.max_network_evaluations}; use fewer steps or samples, or a "
            "smaller image",
        )
    return x_shape, plan, cost


def _parse_spec(text: str) -> TaskSpec:
    try:
        return TaskSpec.model_validate_json(text)
    except ValidationError as err:
        problems = [
            f"not valid JSON ({e['msg']}); send a JSON object"
            if e["type"] == "json_invalid"
            else describe_error(e["loc"], e["msg"])
            for e in err.errors()
        ]
        raise HTTPException(422, "spec: " + "; ".join(problems)) from err


async def _model(store: JobStore, spec: TaskSpec) -> ModelInfo:
    models = await store.models()
    if not models:
        raise HTTPException(503, "no worker has announced a model yet; retry when /readyz is 200")
    name = spec.model or store.settings.model
    if name not in models:
        raise HTTPException(422, f"spec.model: unknown model {name!r}; available: {sorted(models)}")
    info = models[name]
    if spec.guidance_scale > 0 and not info.classifier:
        raise HTTPException(422, f"spec.guidance_scale: model {name!r} has no classifier")
    if info.class_conditional and spec.class_label is None:
        raise HTTPException(422, f"spec.class_label: model {name!r} needs one (0 to 999)")
    if spec.class_label is not None and not (info.class_conditional or spec.guidance_scale > 0):
        raise HTTPException(
            422, f"spec.class_label: model {name!r} is unconditional; use it with guidance_scale"
        )
    return info


async def _read(store: JobStore, field: str, upload: UploadFile) -> CheckedImage:
    limit = store.settings.max_upload_bytes
    data = await upload.read(limit + 1)
    # decoded off the event loop, at most DECODERS at a time, so other requests keep flowing
    return await anyio.to_thread.run_sync(
        check_image, field, data, limit, store.settings.max_pixels, limiter=DECODERS
    )


async def _check_mask(
    store: JobStore, spec: TaskSpec, x_shape: Shape, mask: UploadFile | None
) -> bytes | None:
    size = spec.mask_size(x_shape)
    if size is None:
        if mask is not None:
            raise HTTPException(422, 'mask: the chain has no {"op": "inpaint"}; drop the mask')
        return None
    if mask is None:
        raise HTTPException(
            422, f"mask: missing; inpaint needs a {size[1]}x{size[0]} mask, white = known pixel"
        )
    checked = await _read(store, "mask", mask)
    if (checked.height, checked.width) != size:
        raise HTTPException(
            422,
            f"mask: {checked.width}x{checked.height} does not match the {size[1]}x{size[0]} "
            f"image it masks; send a mask of that size",
        )
    if not checked.has_white:
        raise HTTPException(422, "mask: no known pixel; white marks the pixels to keep")
    return checked.data
