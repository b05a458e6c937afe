"""The catalogue of deliberate faults for tools/fault_check.py (see docs/testing.md).

Each entry replaces ``old`` (which must occur exactly once in ``file``) by ``new``; the pytest
selections in ``tests`` must then fail. ``what`` says what the fault breaks. Keep the selections
narrow: the whole check should stay under 20 minutes on 2 cores.
"""

MVIT_REFERENCE = "tests/test_mvit_reference.py"
VIL_REFERENCE = "tests/test_vil_reference.py::test_training_outputs_and_gradients_equal_reference"
PREDICTOR = "tests/test_predictor.py"
HUB = "tests/test_hub.py"
EXPORT_DYNAMIC = "tests/test_export_dynamic.py"

FAULTS = [
    # ------------------------------------------------------------------ MViTv2 backbone
    dict(
        name="mvit_rel_pos_sign",
        what="relative-position index with the query/key offset's sign flipped",
        file="mvit_det/modeling/backbones/mvit/geometry.py",
        old="index = (q_coords - k_coords) + (k_size - 1) * k_scale",
        new="index = (k_coords - q_coords) + (k_size - 1) * k_scale",
        tests=[MVIT_REFERENCE],
    ),
    dict(
        name="mvit_rel_pos_tables_swapped",
        what="the height table used for widths and the width table for heights",
        file="mvit_det/modeling/backbones/mvit/attention.py",
        old="rel_pos_h, rel_pos_w = self.rel_pos_h, self.rel_pos_w",
        new="rel_pos_h, rel_pos_w = self.rel_pos_w, self.rel_pos_h",
        tests=[MVIT_REFERENCE],
    ),
    dict(
        name="mvit_rel_terms_swapped",
        what="the decomposed height and width terms returned in the wrong order",
        file="mvit_det/modeling/backbones/mvit/geometry.py",
        old="return rel_h.flatten(-3, -2), rel_w.flatten(-3, -2)",
        new="return rel_w.flatten(-3, -2), rel_h.flatten(-3, -2)",
        tests=[MVIT_REFERENCE],
    ),
    dict(
        name="mvit_residual_pooling_adds_k",
        what="the residual pooling connection adds the pooled keys instead of the queries",
        file="mvit_det/modeling/backbones/mvit/attention.py",
        old="out = out + q",
        new="out = out + k",
        tests=[MVIT_REFERENCE],
    ),
    dict(
        name="mvit_kv_stride_not_doubled",
        what="the kv stride of the last blocks of stages 3 and 4 not doubled",
        file="mvit_det/modeling/backbones/mvit/model.py",
        old="block_kv *= 2",
        new="block_kv *= 1",
        tests=[MVIT_REFERENCE],
    ),
    dict(
        name="mvit_window_not_halved",
        what="the attention window not halved from stage to stage",
        file="mvit_det/modeling/backbones/mvit/model.py",
        old="window //= 2",
        new="window //= 1",
        tests=[MVIT_REFERENCE],
    ),
    dict(
        name="mvit_drop_path_quadratic",
        what="stochastic depth rising quadratically instead of linearly over the blocks",
        file="mvit_det/modeling/backbones/mvit/model.py",
        old="drop_path=drop_path_rate * i / max(depth - 1, 1),",
        new="drop_path=drop_path_rate * (i / max(depth - 1, 1)) ** 2,",
        tests=["tests/test_backbone.py::test_drop_path_rises_linearly_over_all_blocks"],
    ),
    dict(
        name="mvit_fused_core_drops_rel_w",
        what="the fused attention core drops the width relative-position terms",
        file="mvit_det/modeling/backbones/mvit/cores.py",
        old="[q * scale, rel_h, rel_w, q.new_zeros",
        new="[q * scale, rel_h, rel_w * 0, q.new_zeros",
        tests=[MVIT_REFERENCE],
    ),
    dict(
        name="mvit_fused_core_low_precision_rel_pos",
        what="under autocast the fused core loses the width relative-position terms",
        file="mvit_det/modeling/backbones/mvit/cores.py",
        old="    rel_h, rel_w = decomposed_rel_pos_terms(q, tables[0], tables[1], q_hw)\n    k_h, k_w",
        new="    rel_h, rel_w = decomposed_rel_pos_terms(q, tables[0], tables[1], q_hw)\n"
        "    if q.dtype != torch.float32:\n        rel_w = rel_w * 0\n    k_h, k_w",
        tests=["tests/test_attention.py::test_fused_is_as_accurate_as_eager_under_autocast"],
    ),
    dict(
        name="vil_fused_core_low_precision_bias",
        what="under autocast the ViL fused core loses the relative-position bias",
        file="mvit_det/modeling/backbones/vil/cores.py",
        old="extra = bias.transpose(1, 2)  # (nh, S, w^2)",
        new="extra = bias.transpose(1, 2) * (1 if dtype == torch.float32 else 0)",
        tests=["tests/test_vil_backbone.py::test_bf16_autocast_is_close_to_fp32"],
    ),
    # ------------------------------------------------------------------ ViL backbone
    dict(
        name="vil_residual_from_norm",
        what="ViL attention residual taken from norm(x) instead of x",
        file="mvit_det/modeling/backbones/vil/model.py",
        old="        return x + self.drop_path(self.attn(self.norm(x), hw))",
        new="        h = self.norm(x)\n        return h + self.drop_path(self.attn(h, hw))",
        tests=[VIL_REFERENCE],
    ),
    dict(
        name="vil_globals_not_dropped",
        what="a stage's global tokens passed on to the next stage's map",
        file="mvit_det/modeling/backbones/vil/model.py",
        old="local = tokens[:, self.num_global_tokens[i] :]",
        new="local = tokens[:, : tokens.shape[1] - self.num_global_tokens[i]]",
        tests=[VIL_REFERENCE],
    ),
    dict(
        name="vil_patch_padding_left",
        what="partial patches padded at the top/left instead of the bottom/right",
        file="mvit_det/modeling/backbones/vil/model.py",
        old="x = F.pad(x, (0, pad_w, 0, pad_h))",
        new="x = F.pad(x, (pad_w, 0, pad_h, 0))",
        tests=[VIL_REFERENCE],
    ),
    dict(
        name="vil_mlp_without_prenorm",
        what="the MLP block skips its pre-norm",
        file="mvit_det/modeling/backbones/vil/model.py",
        old="return x + self.drop_path(self.mlp(self.norm(x)))",
        new="return x + self.drop_path(self.mlp(x))",
        tests=[VIL_REFERENCE],
    ),
    dict(
        name="vil_bias_index_sign",
        what="relative-position bias looked up with the row offset's sign flipped",
        file="mvit_det/modeling/backbones/vil/geometry.py",
        old="dr = (q[:, None] - k[None, :])[:, None, :, None]",
        new="dr = (k[None, :] - q[:, None])[:, None, :, None]",
        tests=[VIL_REFERENCE],
    ),
    dict(
        name="vil_exact_window_off_by_one",
        what="the exact window one token too narrow",
        file="mvit_det/modeling/backbones/vil/geometry.py",
        old="far = (q[:, None] - k[None, :]).abs() > w",
        new="far = (q[:, None] - k[None, :]).abs() >= w",
        tests=[VIL_REFERENCE],
    ),
    dict(
        name="vil_g2l_bias_swapped",
        what="local->global bias taken from the global->local row",
        file="mvit_det/modeling/backbones/vil/attention.py",
        old="to_global = self.g2l_relative_position_bias[1].to(dtype)",
        new="to_global = self.g2l_relative_position_bias[0].to(dtype)",
        tests=[VIL_REFERENCE],
    ),
    dict(
        name="vil_separate_global_proj_ignored",
        what="separate global projections: the globals use the local proj",
        file="mvit_det/modeling/backbones/vil/attention.py",
        old="out_global = (self.proj if shared else self.proj_global)(out_global)",
        new="out_global = self.proj(out_global)",
        tests=[VIL_REFERENCE],
    ),
    dict(
        name="vil_recompute_bias_grad_negated",
        what="the recomputing core's bias-table gradient accumulated with the wrong sign",
        file="mvit_det/modeling/backbones/vil/recompute.py",
        old="grad_bias.add_(grad_scores",
        new="grad_bias.sub_(grad_scores",
        tests=["tests/test_vil_attention.py::test_equals_dense_oracle_fp64"],
    ),
    dict(
        name="vil_recompute_neighbour_grads_transposed",
        what="the recomputing core adds the key/value gradient of neighbour (i, j) at (j, i)",
        file="mvit_det/modeling/backbones/vil/recompute.py",
        old="add_(local[:, :, :, i, j])",
        new="add_(local[:, :, :, j, i])",
        tests=["tests/test_vil_attention.py::test_equals_dense_oracle_fp64"],
    ),
    dict(
        name="vil_recompute_padding_keys_attended",
        what="the recomputing core lets the padding's keys into the softmax",
        file="mvit_det/modeling/backbones/vil/recompute.py",
        old="padded[..., 0].masked_fill_(outside[:, None], -torch.finfo(self.dtype).max / 4)",
        new="padded[..., 0].masked_fill_(outside[:, None], 0.0)",
        tests=["tests/test_vil_attention.py::test_equals_dense_oracle_fp64"],
    ),
    dict(
        name="vil_recompute_last_block_dropped",
        what="the recomputing core's blocks stop one chunk row early",
        file="mvit_det/modeling/backbones/vil/recompute.py",
        old="_Block(r, min(r + step, self.rows), 0, B, nh)",
        new="_Block(r, min(r + step, self.rows - 1), 0, B, nh)",
        tests=["tests/test_vil_attention.py::test_recomputing_core_in_small_blocks_equals_oracle"],
    ),
    dict(
        name="vil_recompute_low_precision_scores",
        what="the recomputing core computes scores in bf16/fp16 instead of float32",
        file="mvit_det/modeling/backbones/vil/recompute.py",
        old="self.dtype = torch.float32 if reduced else q.dtype",
        new="self.dtype = q.dtype",
        tests=[
            "tests/test_vil_attention.py::test_recomputing_core_computes_low_precision_in_float32"
        ],
    ),
    dict(
        name="vil_auto_not_recompute",
        what="attn_impl='auto' keeps the explicit core for training on the CPU",
        file="mvit_det/modeling/backbones/vil/cores.py",
        old='return "eager" if is_tracing_or_exporting() else "recompute"',
        new='return "eager"',
        tests=["tests/test_vil_benchmark.py::test_attention_cores_side_by_side"],
    ),
    dict(
        name="vil_eager_padding_unmasked",
        what="the explicit core lets queries attend the zero padding around the map",
        file="mvit_det/modeling/backbones/vil/cores.py",
        old='scores = scores.masked_fill(outside, float("-inf"))',
        new="scores = scores",
        tests=[VIL_REFERENCE],
    ),
    dict(
        name="tools_summary_shown_twice",
        what="the tools print the loading summary and the checkpointer logs it as well",
        file="mvit_det/tools/loading.py",
        old="log_summary=False\n        )  # printed below",
        new="log_summary=True\n        )  # printed below",
        tests=["tests/test_loading_report.py::test_tools_print_the_summary"],
    ),
    # ------------------------------------------------------------------ backbone families
    dict(
        name="fused_width_not_aligned",
        what="the fused cores ignore the width multiple the device's kernels want",
        file="mvit_det/modeling/fused_attention.py",
        old="    return ceil_div(head_dim + extra, multiple) * multiple",
        new="    return head_dim + extra",
        tests=["tests/test_flop_count.py"],
    ),
    dict(
        name="sdpa_flops_at_padded_width",
        what="the fused attention op counted at its padded width",
        file="mvit_det/analysis.py",
        old="    qk_width = real_width if real_width < v_width else q[-1]",
        new="    qk_width = q[-1]",
        tests=["tests/test_flop_count.py"],
    ),
    dict(
        name="family_yacs_builders_not_installed",
        what="a registered family's yacs builders never reach Detectron2's registry",
        file="mvit_det/config/yacs.py",
        old="        if name not in BACKBONE_REGISTRY:",
        new="        if False:",
        tests=["tests/test_backbone_family.py::test_yacs_keys_and_builder"],
    ),
    dict(
        name="family_weight_options_dropped",
        what="the conversion tool does not pass a family's weight options on",
        file="mvit_det/checkpoint/backbones.py",
        old="        **{k: v for k, v in options.items() if k in own},",
        new="",
        tests=["tests/test_backbone_family.py::test_weights_convert_and_load"],
    ),
    dict(
        name="benchmark_backbone_at_bottom_up",
        what="the benchmark sets the attention core at model.backbone.bottom_up only",
        file="mvit_det/tools/benchmark.py",
        old="    backbone.node.attn_impl = args.attn_impl",
        new="    cfg.model.backbone.bottom_up.attn_impl = args.attn_impl",
        tests=[
            "tests/test_benchmark_configs.py::test_benchmark_runs_the_simple_feature_pyramid_config"
        ],
    ),
    dict(
        name="matching_heuristics_query_ignored",
        what="?matching_heuristics=True is read off the path but not applied",
        file="mvit_det/checkpoint/checkpointer.py",
        old='                checkpoint["matching_heuristics"] = True',
        new="                pass",
        tests=["tests/test_checkpoint_queries.py"],
    ),
    dict(
        name="package_imports_detectron2_mvit",
        what="the MViT family imports Detectron2's own MViT (absent from some Detectron2 builds)",
        file="mvit_det/modeling/backbones/mvit/__init__.py",
        old="from .attention import MultiScaleAttention\n",
        new=(
            "from detectron2.modeling.backbone.mvit import MViT as _D2MViT  # noqa: F401\n"
            "from .attention import MultiScaleAttention\n"
        ),
        tests=["tests/test_backbone_family.py::test_the_package_never_imports_detectron2s_mvit"],
    ),
    # ------------------------------------------------------------------ checkpoints, resume, tools
    dict(
        name="nonfinite_nan_only",
        what="infinite weights (not NaN) pass the non-finite check and get saved",
        file="mvit_det/checkpoint/io.py",
        old="and not bool(torch.isfinite(value).all())",
        new="and bool(torch.isnan(value).any())",
        tests=[
            "tests/test_reliability.py::test_non_finite_weights_are_never_saved",
            "tests/test_reliability.py::test_converter_warns_of_infinite_weights",
            "tests/test_checkpoint_resume.py::test_diverged_weights_are_never_saved",
        ],
    ),
    dict(
        name="several_backbones_unchecked",
        what="a file with backbones under several prefixes loads one of them silently",
        file="mvit_det/checkpoint/mapping.py",
        old="    if len(prefixes) > 1:\n",
        new="    if len(prefixes) > 1 and False:\n",
        tests=[
            "tests/test_reliability.py::test_several_backbones_are_refused",
            "tests/test_reliability.py::test_checkpointer_refuses_a_file_with_two_backbones",
        ],
    ),
    dict(
        name="world_size_change_new_size",
        what="resume with fewer processes: images read counted with the new process count",
        file="mvit_det/engine/trainer.py",
        old='consumed = max(p["next"] for p in positions) * len(positions)',
        new='consumed = max(p["next"] for p in positions) * world_size',
        tests=[
            "tests/test_reliability.py::test_resuming_with_fewer_processes_continues_after_the_images_read"
        ],
    ),
    dict(
        name="world_size_change_floor",
        what="resume with more processes: the new start rounded down (images read twice)",
        file="mvit_det/engine/trainer.py",
        old='"next": -(-consumed // world_size),',
        new='"next": consumed // world_size,',
        tests=[
            "tests/test_reliability.py::test_resuming_with_more_processes_continues_after_the_images_read"
        ],
    ),
    dict(
        name="grad_scaler_not_restored",
        what="the GradScaler state is not restored on resume",
        file="mvit_det/engine/trainer.py",
        old='            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])\n',
        new="            pass\n",
        tests=[
            "tests/test_reliability.py::test_grad_scaler_state_is_restored",
            "tests/test_engine.py::test_accumulation_trainer_state_has_grad_scaler",
        ],
    ),
    dict(
        name="tensorboard_not_purged",
        what="TensorBoard events of a run killed before its first checkpoint are kept",
        file="mvit_det/engine/train_net.py",
        old="purge_step=start_iter if events else None",
        new="purge_step=start_iter or None",
        tests=["tests/test_train_resume.py::test_resumed_run_writes_the_uninterrupted_metrics"],
    ),
    dict(
        name="data_position_not_restored",
        what="the data loader position is not restored on resume",
        file="mvit_det/engine/trainer.py",
        old="                self.data_loader.load_state_dict(positions[rank])\n",
        new="",
        tests=["tests/test_reliability.py::test_interrupted_run_ends_as_the_uninterrupted_one"],
    ),
    dict(
        name="converter_ignores_sha256",
        what="convert_checkpoint --sha256 is ignored",
        file="mvit_det/tools/convert_checkpoint.py",
        old="trust=args.trust_checkpoint, sha256=args.sha256)",
        new="trust=args.trust_checkpoint)",
        tests=["tests/test_reliability.py::test_pinned_digest_of_a_local_file"],
    ),
    dict(
        name="missing_newest_not_skipped",
        what="resume does not fall back when the newest checkpoint is missing",
        file="mvit_det/checkpoint/checkpointer.py",
        old="except (DamagedCheckpointError, NotACheckpointError, CheckpointNotFoundError) as e:",
        new="except (DamagedCheckpointError, NotACheckpointError) as e:",
        tests=[
            "tests/test_reliability.py::test_missing_newest_checkpoint_falls_back_to_the_previous"
        ],
    ),
    dict(
        name="other_shapes_resumed",
        what="resuming a model of other shapes is not refused",
        file="mvit_det/checkpoint/checkpointer.py",
        old="if self._resuming_from and incompatible.incorrect_shapes:",
        new="if False and self._resuming_from and incompatible.incorrect_shapes:",
        tests=["tests/test_reliability.py::test_resuming_a_model_of_other_shapes_is_refused"],
    ),
    dict(
        name="training_tool_trust_ignored",
        what="the training tool ignores --trust-checkpoint",
        file="mvit_det/engine/train_net.py",
        old='    trust = getattr(args, "trust_checkpoint", False)',
        new="    trust = False",
        tests=["tests/test_reliability.py::test_training_tool_trust_checkpoint"],
    ),
    dict(
        name="checkpoint_write_not_atomic",
        what="training checkpoints written in place (a failed write leaves half a file)",
        file="mvit_det/checkpoint/checkpointer.py",
        old="atomic_write(path, lambda f: torch.save(data, f))",
        new="torch.save(data, path)",
        tests=["tests/test_reliability.py::test_failed_checkpoint_writes_keep_the_previous_state"],
    ),
    dict(
        name="augmentation_seeded_by_position",
        what="augmentation seeded by the rank position, not the image index of the stream",
        file="mvit_det/engine/train_loader.py",
        old="derive_seed(self.seed, _AUGMENTATION, index)",
        new="derive_seed(self.seed, _AUGMENTATION, position)",
        tests=[
            "tests/test_reliability.py::test_stream_rule_image_g_is_permutation_of_its_epoch",
            "tests/test_train_loader.py",
        ],
    ),
    dict(
        name="unsafe_pickle_full",
        what="pickles unpickled in full without the opt-in",
        file="mvit_det/checkpoint/containers.py",
        old="        if trust:\n            return _load_trusted(path, container)",
        new="        if True:\n            return _load_trusted(path, container)",
        tests=["tests/test_checkpoint_safety.py::test_malicious_files_do_not_run_without_opt_in"],
    ),
    dict(
        name="torch_load_full",
        what="torch files unpickled in full without the opt-in",
        file="mvit_det/checkpoint/containers.py",
        old="        return _read_torch_zip(path, refused)",
        new='        return torch.load(path, map_location="cpu", weights_only=False)',
        tests=["tests/test_checkpoint_safety.py::test_malicious_files_do_not_run_without_opt_in"],
    ),
    dict(
        name="object_arrays_allowed",
        what="numpy arrays of Python objects allowed in plain-data pickles",
        file="mvit_det/checkpoint/unpickling.py",
        old='_PLAIN_DTYPE_KINDS = "biufcSU"',
        new='_PLAIN_DTYPE_KINDS = "biufcSUO"',
        tests=["tests/test_checkpoint_safety.py::test_plain_data_loads_without_opt_in"],
    ),
    dict(
        name="download_cache_ignores_host",
        what="downloads from every host share one cache folder",
        file="mvit_det/checkpoint/download.py",
        old='folder = os.path.join(root, _HOSTS_FOLDER, f"{scheme}_{host}_{port}")',
        new="folder = root",
        tests=[
            "tests/test_checkpoint_safety.py::test_cache_paths_stay_in_the_cache_and_apart_per_host"
        ],
    ),
    dict(
        name="download_dotdot_segments_kept",
        what="'..' in a URL path lets a download write outside the cache",
        file="mvit_det/checkpoint/download.py",
        old='and all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments)',
        new="and all(_SEGMENT.fullmatch(s) for s in segments)",
        tests=[
            "tests/test_checkpoint_safety.py::test_cache_paths_stay_in_the_cache_and_apart_per_host"
        ],
    ),
    dict(
        name="download_no_overall_deadline",
        what="a slow-drip server keeps a download alive past its deadline",
        file="mvit_det/checkpoint/download.py",
        old="return feed.get(timeout=max(end - time.monotonic(), 0.0))",
        new="return feed.get(timeout=timeout)",
        tests=["tests/test_checkpoint_safety.py::test_slow_drip_server_fails_at_the_deadline"],
    ),
    dict(
        name="download_announced_size_unchecked",
        what="a download announcing more than the size limit is fetched anyway",
        file="mvit_det/checkpoint/download.py",
        old="if expected is not None and expected > max_bytes:",
        new="if False:",
        tests=[
            "tests/test_checkpoint_safety.py::test_downloads_over_the_size_limit_are_refused_early"
        ],
    ),
    dict(
        name="unpickling_frombuffer_refused",
        what="protocol-5 numpy pickles (numpy.core.numeric._frombuffer) are refused",
        file="mvit_det/checkpoint/unpickling.py",
        old='        "numpy.core.numeric._frombuffer": _frombuffer,',
        new="",
        tests=["tests/test_checkpoint_safety.py::test_numpy_arrays_of_every_pickle_protocol_load"],
    ),
    dict(
        name="unpickling_array_larger_than_file",
        what="an array whose data is not in the file is allocated anyway",
        file="mvit_det/checkpoint/unpickling.py",
        old="    if len(data) != needed:",
        new="    if False:",
        tests=[
            "tests/test_checkpoint_safety.py::test_arrays_larger_than_the_file_are_refused_before_allocating"
        ],
    ),
    dict(
        name="unpickling_unknown_global_is_unsafe",
        what="a damaged name in a pickle is reported as unsafe instead of damaged",
        file="mvit_det/checkpoint/unpickling.py",
        old="        if not _existing_global(module, name):",
        new="        if False:",
        tests=["tests/test_checkpoint_fuzz.py::test_damaged_files_give_weights_or_a_damage_error"],
    ),
    dict(
        name="pkl_written_with_protocol_5",
        what="converted .pkl files use a pickle protocol the safe reader and Detectron2 refuse",
        file="mvit_det/checkpoint/io.py",
        old="_PKL_PROTOCOL = 4",
        new="_PKL_PROTOCOL = pickle.HIGHEST_PROTOCOL",
        tests=[
            "tests/test_checkpoint_safety.py::test_converter_pkl_loads_without_trust_and_in_detectron2"
        ],
    ),
    dict(
        name="objects_beside_weights_refused",
        what="weights of a Detectron2 training checkpoint with pickled trainer objects are refused",
        file="mvit_det/checkpoint/io.py",
        old="    container, obj = _read(path, trust, sha256, timeout, substitute=not trust)",
        new="    container, obj = _read(path, trust, sha256, timeout, substitute=False)",
        tests=[
            "tests/test_checkpoint_safety.py::test_detectron2_training_checkpoint_weights_read_without_trust"
        ],
    ),
    dict(
        name="resume_from_file_with_objects_left_out",
        what="resume silently drops trainer state that could not be read safely",
        file="mvit_det/checkpoint/checkpointer.py",
        old="        if not (self._resuming_from and skipped):",
        new="        if True:",
        tests=["tests/test_checkpoint_safety.py::test_objects_beside_the_weights_are_left_out"],
    ),
    dict(
        name="zip_crc_unchecked",
        what="zip checkpoints not CRC-checked",
        file="mvit_det/checkpoint/containers.py",
        old="bad = archive.testzip()",
        new="bad = None",
        tests=["tests/test_checkpoint_safety.py::test_damaged_zip_is_detected"],
    ),
    dict(
        name="download_digest_unchecked",
        what="a download is not checked against its pinned SHA-256",
        file="mvit_det/checkpoint/download.py",
        old="    sniff_container(path, source)\n    _check_sha256(path, sha256, source)\n",
        new="    sniff_container(path, source)\n",
        tests=["tests/test_checkpoint_safety.py::test_download_is_verified_cached_and_healed"],
    ),
    dict(
        name="damaged_newest_not_skipped",
        what="resume does not fall back when the newest checkpoint is damaged",
        file="mvit_det/checkpoint/checkpointer.py",
        old="except (DamagedCheckpointError, NotACheckpointError, CheckpointNotFoundError) as e:",
        new="except (NotACheckpointError, CheckpointNotFoundError) as e:",
        tests=[
            "tests/test_checkpoint_resume.py::test_damaged_newest_checkpoint_falls_back_to_the_previous"
        ],
    ),
    dict(
        name="omegaconf_saved_as_is",
        what="training checkpoints pickle omegaconf objects (not loadable with weights_only)",
        file="mvit_det/checkpoint/checkpointer.py",
        old="        data = plain_data(data)\n",
        new="",
        tests=["tests/test_checkpoint_resume.py::test_trainer_checkpoints_load_with_weights_only"],
    ),
    dict(
        name="analyze_report_not_atomic",
        what="analyze's JSON report written in place",
        file="mvit_det/tools/analyze.py",
        old="atomic_write(args.output, lambda f: f.write(json.dumps(report, indent=2).encode()))",
        new='open(args.output, "w").write(json.dumps(report, indent=2))',
        tests=[
            "tests/test_reliability.py::test_failed_json_report_write_keeps_the_previous_report"
        ],
    ),
    dict(
        name="metrics_history_not_restored",
        what="smoothed losses start afresh after resume (history buffers not restored)",
        file="mvit_det/engine/trainer.py",
        old='self._restored_history = state_dict.get("history")',
        new="self._restored_history = None",
        tests=["tests/test_train_resume.py::test_resumed_run_writes_the_uninterrupted_metrics"],
    ),
    dict(
        name="metrics_not_trimmed_without_checkpoint",
        what="a run killed before its first checkpoint logs its iterations twice after resume",
        file="mvit_det/engine/train_net.py",
        old='        _drop_metrics_after(os.path.join(cfg.train.output_dir, "metrics.json"), start_iter - 1)',
        new='        start_iter and _drop_metrics_after(os.path.join(cfg.train.output_dir, "metrics.json"), start_iter - 1)',
        tests=["tests/test_train_resume.py::test_resumed_run_writes_the_uninterrupted_metrics"],
    ),
    dict(
        name="resume_lr_override_dropped",
        what="a lower optimizer.lr given on --resume is dropped (the divergence advice fails)",
        file="mvit_det/engine/train_net.py",
        old='group["initial_lr"] = group["lr"] = wanted["lr"]',
        new='group["lr"] = wanted["lr"]',
        tests=["tests/test_train_resume.py::test_resuming_with_the_advised_lower_lr_uses_it"],
    ),
    dict(
        name="workers_do_not_hold_the_lock",
        what="training processes do not hold the output-folder lock",
        file="mvit_det/engine/train_net.py",
        old="args.output_lock = lock",
        new="args.output_lock = None",
        tests=[
            "tests/test_distributed.py::test_training_processes_hold_the_lock_and_die_with_the_launcher"
        ],
    ),
    dict(
        name="infinite_lr_accepted",
        what="optimizer.lr=inf is accepted",
        file="mvit_det/engine/train_net.py",
        old="and math.isfinite(lr) and lr > 0)",
        new="and lr > 0)",
        tests=["tests/test_train_net.py::test_usage_errors_are_clear_and_found_before_launch"],
    ),
    dict(
        name="special_annotation_files_opened",
        what="a FIFO or device given as annotation file is opened (and hangs)",
        file="mvit_det/data/datasets.py",
        old="        _check_file_kinds(name, json_file, image_root)\n        return",
        new="        return",
        tests=["tests/test_train_net.py::test_usage_errors_are_clear_and_found_before_launch"],
    ),
    dict(
        name="backbone_args_not_checked_before_launch",
        what="a bad backbone argument is found only inside the training processes",
        file="mvit_det/engine/train_net.py",
        old="    _check_values(cfg)\n    _check_backbone_args(cfg)\n",
        new="    _check_values(cfg)\n",
        tests=["tests/test_train_net.py::test_vil_backbone_arguments_are_checked_before_launch"],
    ),
    dict(
        name="demo_milestones_not_scaled",
        what="the demo's --help example (train.max_iter=300) gets milestones beyond the run",
        file="mvit_det/tools/demo.py",
        old="opts = args.opts + schedule_overrides(DEMO_CONFIGS[args.backbone], args.opts)",
        new="opts = args.opts",
        tests=["tests/test_train_resume.py::test_demo_help_example_gets_a_schedule_that_fits"],
    ),
    # ------------------------------------------------------------------ tools
    dict(
        name="export_compare_outputs_blind",
        what="the export tool's comparison reports 0 for every output",
        file="mvit_det/tools/export.py",
        old="        errors.append(diff / scale if scale > 0 else diff)",
        new="        errors.append(0.0)",
        tests=["tests/test_export.py::test_compare_outputs_measures_known_differences"],
    ),
    dict(
        name="export_backbone_outputs_reversed",
        what="exported backbones return their feature maps in reversed order",
        file="mvit_det/tools/export.py",
        old="return tuple(features[name] for name in self.names)",
        new="return tuple(features[name] for name in reversed(self.names))",
        tests=["tests/test_export.py::test_torchscript_trace_of_the_backbone_serves_other_sizes"],
    ),
    dict(
        name="export_onnx_outputs_reversed",
        what="the ONNX runner returns the outputs in reversed order",
        file="mvit_det/tools/export.py",
        old="return session.run(None, {session.get_inputs()[0].name: images.cpu().numpy()})",
        new="return session.run(None, {session.get_inputs()[0].name: images.cpu().numpy()})[::-1]",
        tests=["tests/test_export.py::test_legacy_onnx_backbone_is_valid_and_matches"],
    ),
    dict(
        name="predict_video_frames_bgr",
        what="video frames fed to the model in BGR order",
        file="mvit_det/tools/predict.py",
        old="        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)",
        new="        yield frame",
        tests=["tests/test_tools.py::test_predict_images_folder_glob_and_video"],
    ),
    dict(
        name="predict_last_batch_dropped",
        what="predict drops the last, incomplete batch",
        file="mvit_det/tools/predict.py",
        old="    if batch:\n        yield batch",
        new="    if batch:\n        pass",
        tests=["tests/test_tools.py::test_predict_images_folder_glob_and_video"],
    ),
    dict(
        name="predict_category_ids_of_unloaded_dataset",
        what="predict writes class indexes instead of dataset category ids",
        file="mvit_det/predictor.py",
        old="            mapping = _dataset_id_to_contiguous_id(self.loaded)",
        new='            mapping = self.loaded.metadata.get("thing_dataset_id_to_contiguous_id")',
        tests=["tests/test_tools.py::test_predict_category_ids_of_a_coco_json_dataset"],
    ),
    dict(
        name="yacs_yaml_read_unsafely",
        what="yacs YAMLs read with Python tags enabled",
        file="mvit_det/config/safe_yaml.py",
        old="cfg.merge_from_file(path, allow_unsafe=trust)",
        new="cfg.merge_from_file(path, allow_unsafe=True)",
        tests=[
            "tests/test_safe_yaml.py::test_yacs_python_tags_are_refused_in_the_file_and_its_bases"
        ],
    ),
    dict(
        name="lazy_yaml_read_unsafely",
        what="LazyConfig YAMLs read in full without the opt-in",
        file="mvit_det/config/safe_yaml.py",
        old="    if trust:\n        return LazyConfig.load(path)",
        new="    if True:\n        return LazyConfig.load(path)",
        tests=[
            "tests/test_safe_yaml.py::test_lazy_yaml_python_tags_are_refused_without_running_code"
        ],
    ),
    dict(
        name="tools_ignore_trust_checkpoint",
        what="the tools' --trust-checkpoint never reaches the checkpointer",
        file="mvit_det/tools/loading.py",
        old="loaded.model, trust=trust_checkpoint, log_summary=False",
        new="loaded.model, log_summary=False",
        tests=[
            "tests/test_tools.py::test_tools_read_the_converters_pkl_and_refuse_pickled_objects"
        ],
    ),
    dict(
        name="predict_outputs_overwrite",
        what="a.jpg and a.png in one input write the same output file",
        file="mvit_det/tools/predict.py",
        old='        return (name if count == 1 else f"{name}_{count}") + extension',
        new="        return os.path.splitext(name)[0] + extension",
        tests=["tests/test_tools.py::test_predict_skips_bad_inputs_and_keeps_output_names_apart"],
    ),
    dict(
        name="predict_pixel_limit_unchecked",
        what="predict decodes images larger than --max-image-pixels",
        file="mvit_det/predictor.py",
        old="            check_image_pixels(width, height, max_pixels, limit)\n            return",
        new="            return",
        tests=["tests/test_tools.py::test_predict_skips_bad_inputs_and_keeps_output_names_apart"],
    ),
    dict(
        name="vil_empty_batch",
        what="ViL's fused core fails on an empty batch",
        file="mvit_det/modeling/backbones/vil/cores.py",
        old="    q_shape = (B * nh, rows * cols, w2, width)",
        new="    q_shape = (B * nh, -1, w2, width)",
        tests=["tests/test_vil_backbone.py::test_empty_batch_gives_empty_maps_and_gradients"],
    ),
    dict(
        name="training_tool_reads_yaml_unsafely",
        what="the training tool reads LazyConfig YAMLs in full without --trust-config",
        file="mvit_det/engine/train_net.py",
        old='cfg = load_lazy_config(args.config_file, trust=getattr(args, "trust_config", False))',
        new="cfg = load_lazy_config(args.config_file, trust=True)",
        tests=[
            "tests/test_train_net.py::test_lazy_yaml_config_with_python_tags_is_refused_unless_trusted"
        ],
    ),
    dict(
        name="training_tool_config_name_unresolved",
        what="the training tool takes only paths, not shipped config names",
        file="mvit_det/engine/train_net.py",
        old="    args.config_file = _resolve_config_file(args.config_file)\n",
        new="",
        tests=["tests/test_train_net.py::test_shipped_config_by_name"],
    ),
    dict(
        name="published_multiscale_crop",
        what="the published multi-scale recipe crops 384-640 instead of 384-600",
        file="configs/common/coco_multiscale.py",
        old="crop_size=(384, 600)",
        new="crop_size=(384, 640)",
        tests=["tests/test_published_configs.py::test_data"],
    ),
    dict(
        name="published_l_milestone",
        what="a milestone of the published L LSJ recipe off by one iteration",
        file="configs/published/cascade_mask_rcnn_mvitv2_l_in21k_lsj_50ep.py",
        old="[81944, 88773]",
        new="[81944, 88774]",
        tests=["tests/test_published_configs.py::test_schedule_and_train_settings"],
    ),
    dict(
        name="published_vitdet_square_pad",
        what="the ViTDet-style recipes pad to 1280 instead of 1024",
        file="configs/common/cascade_mask_rcnn_mvitv2_vitdet.py",
        old="model.backbone.square_pad = 1024",
        new="model.backbone.square_pad = 1280",
        tests=["tests/test_published_configs.py::test_model_and_optimizer_equal_the_reference"],
    ),
    dict(
        name="yacs_test_resize_differs",
        what="the yacs YAMLs test at another size than their LazyConfigs",
        file="configs/yacs/Base-Mask-RCNN-MViTv2.yaml",
        old="  MIN_SIZE_TEST: 800",
        new="  MIN_SIZE_TEST: 1024",
        tests=["tests/test_yacs.py::test_yaml_test_input_equals_the_lazy_config"],
    ),
    # ------------------------------------------------------------------ loading summary
    dict(
        name="loading_summary_new_keys_surprising",
        what="the per-output norms a detection backbone adds are reported as surprising",
        file="mvit_det/checkpoint/summary.py",
        old="        elif key in new:\n",
        new="        elif False:\n",
        tests=[
            "tests/test_loading_report.py::test_classification_files_load_with_only_expected_gaps"
        ],
    ),
    dict(
        name="loading_summary_heads_surprising",
        what="the FPN and heads missing from a backbone-only file are reported as surprising",
        file="mvit_det/checkpoint/summary.py",
        old="        elif not detector_weights:\n",
        new="        elif detector_weights:\n",
        tests=["tests/test_loading_report.py::test_published_vil_classification_file"],
    ),
    dict(
        name="loading_summary_shapes_ignored",
        what="tensors of other shapes counted as loaded instead of surprising",
        file="mvit_det/checkpoint/summary.py",
        old="            if old == shape:\n",
        new="            if True:\n",
        tests=[
            "tests/test_loading_report.py::test_other_shapes_and_unknown_tensors_are_surprising"
        ],
    ),
    dict(
        name="loading_summary_unknown_keys_expected",
        what="tensors the model has no place for reported as expected",
        file="mvit_det/checkpoint/summary.py",
        old='surprising[("unused", "not used by the model")]',
        new='expected[("unused", "not used by the model")]',
        tests=[
            "tests/test_loading_report.py::test_other_shapes_and_unknown_tensors_are_surprising"
        ],
    ),
    dict(
        name="loading_summary_detectron2_warnings_loud",
        what="Detectron2's warning lists the expected FPN and heads again",
        file="mvit_det/checkpoint/checkpointer.py",
        old="        self.logger = _WarningsAtDebug(logger)  # type: ignore[assignment]\n",
        new="",
        tests=[
            "tests/test_loading_report.py::test_classification_files_load_with_only_expected_gaps"
        ],
    ),
    dict(
        name="loading_summary_detectron2_warnings_silenced",
        what="Detectron2's warning about a missing block tensor goes to debug level too",
        file="mvit_det/checkpoint/checkpointer.py",
        old="missing_keys=[k for k in incompatible.missing_keys if k not in expected],",
        new="missing_keys=[],",
        tests=["tests/test_loading_report.py::test_a_missing_block_tensor_is_surprising"],
    ),
    dict(
        name="loading_summary_not_printed",
        what="the tools load weights without printing the loading summary",
        file="mvit_det/tools/loading.py",
        old="            print(loaded.loading.format(), file=sys.stdout, flush=True)\n",
        new="            pass\n",
        tests=["tests/test_loading_report.py::test_tools_print_the_summary"],
    ),
    dict(
        name="mae_decoder_not_dropped",
        what="an MAE pretraining checkpoint's decoder refused as tensors of another model",
        file="mvit_det/modeling/backbones/mvit/weights.py",
        old='    (re.compile(r"^(decoder_|mask_token$)"), "MAE pretraining decoder"),\n',
        new="",
        tests=[
            "tests/test_loading_report.py::test_classification_files_load_with_only_expected_gaps"
        ],
    ),
    # ------------------------------------------------------------------ training curves
    dict(
        name="metrics_plot_first_record_wins",
        what="of a resumed run's repeated iterations, the interrupted run's records are drawn",
        file="mvit_det/engine/metrics_plot.py",
        old="                by_iteration[iteration] = record  # a later line replaces an earlier one",
        new="                by_iteration.setdefault(iteration, record)",
        tests=["tests/test_plot_metrics.py::test_tool_draws_the_series_of_a_resumed_run"],
    ),
    dict(
        name="metrics_plot_nan_drawn",
        what="NaN and infinite values kept in the drawn series",
        file="mvit_det/engine/metrics_plot.py",
        old="    return float(value) if math.isfinite(value) else None",
        new="    return float(value)",
        tests=["tests/test_plot_metrics.py::test_tool_draws_the_series_of_a_resumed_run"],
    ),
    dict(
        name="metrics_plot_not_atomic",
        what="the picture is written in place, so a failed drawing leaves half a file",
        file="mvit_det/engine/metrics_plot.py",
        old='    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=_DPI))',
        new='    with open(path, "wb") as f:\n        figure.savefig(f, format="png", dpi=_DPI)',
        tests=["tests/test_plot_metrics.py::test_a_failed_drawing_leaves_the_previous_picture"],
    ),
    dict(
        name="metrics_plot_drawn_before_the_results_are_written",
        what="the hook draws right after an evaluation, before metrics.json holds its results",
        file="mvit_det/engine/metrics_plot.py",
        old="        if self._pending and next_iter % self._write_period == 0:",
        new="        if self._pending:",
        tests=[
            "tests/test_plot_metrics.py::test_hook_draws_once_each_evaluation_is_written_and_at_the_end"
        ],
    ),
    dict(
        name="metrics_plot_failure_stops_training",
        what="a picture that cannot be written raises out of the training loop",
        file="mvit_det/engine/metrics_plot.py",
        old="        except Exception as e:  # a picture is never worth a training run",
        new="        except ImportError as e:  # a picture is never worth a training run",
        tests=["tests/test_plot_metrics.py::test_hook_failure_is_a_warning"],
    ),
    dict(
        name="metrics_plot_hook_before_writer",
        what="the training hook draws before metrics.json is written, missing the last results",
        file="mvit_det/engine/train_net.py",
        old=(
            "                hooks.PeriodicWriter(writers, period=cfg.train.log_period),\n"
            "                # After the writer: it draws metrics.json as just written.\n"
            "                PlotMetricsHook(\n"
            '                    os.path.join(cfg.train.output_dir, "metrics.json"),\n'
            "                    os.path.join(cfg.train.output_dir, METRICS_PICTURE),\n"
            "                    eval_period=cfg.train.eval_period,\n"
            "                    write_period=cfg.train.log_period,\n"
            "                ),\n"
        ),
        new=(
            "                PlotMetricsHook(\n"
            '                    os.path.join(cfg.train.output_dir, "metrics.json"),\n'
            "                    os.path.join(cfg.train.output_dir, METRICS_PICTURE),\n"
            "                    eval_period=cfg.train.eval_period,\n"
            "                    write_period=cfg.train.log_period,\n"
            "                ),\n"
            "                hooks.PeriodicWriter(writers, period=cfg.train.log_period),\n"
        ),
        tests=["tests/test_plot_metrics.py::test_demo_run_draws_its_curves_and_prints_where"],
    ),
    # ------------------------------------------------------------------ Python predictor, hub
    dict(
        name="predictor_channel_order_to_model",
        what="the predictor gives the model BGR images where it takes RGB",
        file="mvit_det/predictor.py",
        old='        if self.loaded.input_format == "BGR":\n            image_rgb = image_rgb[:, :, ::-1]',
        new='        if self.loaded.input_format == "RGB":\n            image_rgb = image_rgb[:, :, ::-1]',
        tests=[f"{PREDICTOR}::test_predictor_equals_the_model_on_the_image_resized_here"],
    ),
    dict(
        name="predictor_bgr_array_not_swapped",
        what="numpy images taken as RGB whatever input_format says",
        file="mvit_det/predictor.py",
        old='            return image if self.input_format == "RGB" else image[:, :, ::-1]',
        new="            return image",
        tests=[f"{PREDICTOR}::test_bgr_numpy_rgb_numpy_pil_and_path_agree"],
    ),
    dict(
        name="predictor_pil_exif_ignored",
        what="PIL images predicted without their EXIF orientation",
        file="mvit_det/predictor.py",
        old='            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))',
        new='            return np.asarray(image.convert("RGB"))',
        tests=[f"{PREDICTOR}::test_bgr_numpy_rgb_numpy_pil_and_path_agree"],
    ),
    dict(
        name="predictor_batch_pads_sizes_together",
        what="a batch puts images of different sizes into one model call (padded together)",
        file="mvit_det/predictor.py",
        old='            groups.setdefault(tuple(model_input["image"].shape), []).append(index)',
        new="            groups.setdefault((), []).append(index)",
        tests=[f"{PREDICTOR}::test_batch_equals_single_calls"],
    ),
    dict(
        name="to_coco_keeps_class_indexes",
        what="to_coco writes class indexes instead of the dataset's category ids",
        file="mvit_det/predictor.py",
        old="        if category_ids is not None:\n            record",
        new="        if False:\n            record",
        tests=[f"{PREDICTOR}::test_to_coco_maps_class_indexes_to_the_datasets_category_ids"],
    ),
    dict(
        name="predictor_config_object_changed",
        what="a LazyConfig object given to the predictor is changed by its overrides",
        file="mvit_det/tools/loading.py",
        old="_load_lazy(copy.deepcopy(config), IN_MEMORY, device, opts)",
        new="_load_lazy(config, IN_MEMORY, device, opts)",
        tests=[f"{PREDICTOR}::test_config_objects_and_yacs_yaml_give_the_same_predictions"],
    ),
    dict(
        name="python_api_ignores_trust_checkpoint",
        what="Predictor and model_zoo.get never pass trust_checkpoint to the checkpointer",
        file="mvit_det/model_zoo/__init__.py",
        old="BackboneCheckpointer(model, trust=trust_checkpoint).load(weights)",
        new="BackboneCheckpointer(model).load(weights)",
        tests=[f"{PREDICTOR}::test_bad_configs_and_weights_are_refused"],
    ),
    dict(
        name="hub_names_without_family_prefix",
        what="the MViT backbones are named mvit_* instead of mvitv2_*",
        file="mvit_det/modeling/backbones/registry.py",
        old="        prefix = self.model_prefix or self.name",
        new="        prefix = self.name",
        tests=[f"{HUB}::test_hub_offers_every_backbone_preset_and_every_shipped_detector"],
    ),
    dict(
        name="hub_entry_drops_weights",
        what="the torch.hub entry points build the model but do not pass the weights on",
        file="hubconf.py",
        old="            name,\n            weights,\n",
        new="            name,\n            None,\n",
        tests=[f"{HUB}::test_tiny_backbones_build_fully_and_load_weights_from_a_file"],
    ),
    dict(
        name="hub_backbone_arguments_ignored",
        what="model_zoo.get builds the preset without the backbone arguments given",
        file="mvit_det/model_zoo/__init__.py",
        old="model = family.backbone(**family.preset(size, **backbone_kwargs))",
        new="model = family.backbone(**family.preset(size))",
        tests=[f"{HUB}::test_unknown_names_and_wrong_arguments_are_refused"],
    ),
    dict(
        name="hub_pretrained_digest_dropped",
        what="pretrained=True loads a recorded URL without its SHA-256 pin",
        file="mvit_det/modeling/backbones/registry.py",
        old='        return f"{self.url}#sha256={self.sha256}" if self.sha256 else self.url',
        new="        return self.url",
        tests=[f"{HUB}::test_pretrained_weights_download_pinned_or_not"],
    ),
    dict(
        name="vil_meta_build_fails",
        what="ViL's drop-path rates read from a tensor on the building device (fails on meta)",
        file="mvit_det/modeling/backbones/vil/model.py",
        old='torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()',
        new="torch.linspace(0, drop_path_rate, sum(depths)).tolist()",
        tests=[f"{HUB}::test_every_backbone_entry_builds_its_preset"],
    ),
    # ------------------------------------------------------------------ ONNX at any input size
    dict(
        name="unflatten_dim_not_traceable",
        what="unflatten also under tracing: the legacy exporter fixes the traced sizes",
        file="mvit_det/modeling/layers.py",
        old="    if not is_tracing_or_exporting():\n        return x.unflatten(dim, sizes)",
        new="    if True:\n        return x.unflatten(dim, sizes)",
        tests=[EXPORT_DYNAMIC + "::test_legacy_backbone_one_file_every_size_and_batch"],
    ),
    dict(
        name="mvit_traced_window_pad_frozen",
        what="MViT's traced window padding by F.pad, whose widths a trace freezes",
        file="mvit_det/modeling/backbones/mvit/geometry.py",
        old="x = zero_pad_end(zero_pad_end(x, 1, rows * win_h - H), 2, cols * win_w - W)",
        new="x = F.pad(x, (0, 0, 0, 0, 0, cols * win_w - W, 0, rows * win_h - H))",
        tests=[EXPORT_DYNAMIC + "::test_legacy_backbone_one_file_every_size_and_batch"],
    ),
    dict(
        name="mvit_traced_abs_pos_resize_skipped",
        what="the absolute position resize left out of a graph traced at the table's own grid",
        file="mvit_det/modeling/backbones/mvit/geometry.py",
        old="if is_tracing_or_exporting() or (side, side) != tuple(hw):",
        new="if (side, side) != tuple(hw):",
        tests=[EXPORT_DYNAMIC + "::test_legacy_mvit_absolute_positions_at_other_grids"],
    ),
    dict(
        name="vil_traced_patch_pad_frozen",
        what="ViL's traced patch-embedding padding frozen to the export size's",
        file="mvit_det/modeling/backbones/vil/model.py",
        old="x = zero_pad_end(x, 2, (p - x.shape[2] % p) % p)",
        new="x = F.pad(x, (0, 0, 0, int((p - x.shape[2] % p) % p)))",
        tests=[EXPORT_DYNAMIC + "::test_legacy_backbone_alone_at_sizes_no_multiple_of_32"],
    ),
    dict(
        name="vil_traced_query_chunks_frozen",
        what="ViL's traced query chunks padded by widths frozen to the export size's",
        file="mvit_det/modeling/backbones/vil/geometry.py",
        old="padded = zero_pad_end(zero_pad_end(q_map, 2, rows * w - H), 3, cols * w - W)",
        new="padded = F.pad(q_map, (0, 0, 0, int(cols * w - W), 0, int(rows * w - H)))",
        tests=[EXPORT_DYNAMIC + "::test_legacy_backbone_one_file_every_size_and_batch"],
    ),
    dict(
        name="vil_traced_key_regions_frozen",
        what="ViL's traced key regions padded by widths frozen to the export size's",
        file="mvit_det/modeling/backbones/vil/geometry.py",
        old="padded = zero_pad_end(zero_pad_end(local, 2, rows * w - H), 3, cols * w - W)",
        new="padded = F.pad(local, (0, 0, 0, int(cols * w - W), 0, int(rows * w - H)))",
        tests=[EXPORT_DYNAMIC + "::test_legacy_backbone_one_file_every_size_and_batch"],
    ),
    dict(
        name="vil_traced_region_padding_unfold",
        what="ViL's padding mask cut into regions by unfold also when traced",
        file="mvit_det/modeling/backbones/vil/geometry.py",
        old="    if not is_tracing_or_exporting():\n        return padding.unfold(",
        new="    if True:\n        return padding.unfold(",
        tests=[EXPORT_DYNAMIC + "::test_legacy_backbone_one_file_every_size_and_batch"],
    ),
    dict(
        name="export_dynamic_axes_dropped",
        what="export --dynamic-size writes a legacy ONNX file of fixed size",
        file="mvit_det/tools/export.py",
        old="                    dynamic_axes=dynamic,",
        new="                    dynamic_axes=None,",
        tests=[EXPORT_DYNAMIC + "::test_tool_exports_any_size_lists_ops_and_records_checks"],
    ),
    dict(
        name="export_size_checks_ignored",
        what="export --dynamic-size accepts a file that fails at the other sizes",
        file="mvit_det/tools/export.py",
        old="    if failures:\n        raise ToolError(",
        new="    if False:\n        raise ToolError(",
        tests=[EXPORT_DYNAMIC + "::test_tool_fails_on_a_file_that_does_not_serve_other_sizes"],
    ),
    dict(
        name="export_dynamo_batch_of_one",
        what="the dynamo export at dynamic sizes gets a batch of one (torch.export fixes it)",
        file="mvit_det/tools/export.py",
        old="        example = torch.cat([example, example.flip(-1)])",
        new="        example = example",
        tests=[EXPORT_DYNAMIC + "::test_tool_gives_the_dynamo_exporter_a_batch_of_two"],
    ),
    dict(
        name="export_dynamo_detector_reason_lost",
        what="the tool no longer says where torch.export stops on the whole detector",
        file="mvit_det/tools/export.py",
        old='"check (are_strides_like_channels_last) raises GuardOnDataDependentSymNode. Use --exporter "',
        new='"check fails. Use --exporter "',
        tests=[EXPORT_DYNAMIC + "::test_tool_names_why_dynamo_cannot_export_the_detector"],
    ),
]
