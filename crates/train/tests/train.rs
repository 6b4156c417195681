//! Tests of the training crate's parts: optimiser updates against hand-computed PyTorch
//! semantics, schedules, configs, checkpoints and the model file.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use siamese_train::{Decay, Optimizer, OptimizerConfig, Schedule, TrainConfig};

fn one_param(value: f32) -> Result<(Var, Vec<(String, Var)>)> {
    let v = Var::from_tensor(&Tensor::new(&[value], &Device::Cpu)?)?;
    Ok((v.clone(), vec![("p".to_string(), v)]))
}

/// A gradient store holding d(loss)/dp = g, made from loss = g · p.
fn grads_for(v: &Var, g: f32) -> Result<candle_core::backprop::GradStore> {
    Ok((v.as_tensor() * g as f64)?.sum_all()?.backward()?)
}

#[test]
fn adamw_first_step_matches_pytorch_closed_form() -> Result<()> {
    // torch.optim.AdamW(lr=0.1, weight_decay=0.01): p=1, g=0.5. Decay: p = 1·(1 − 0.1·0.01)
    // = 0.999; m̂ = 0.5, v̂ = 0.25, update = 0.1 · 0.5 / (0.5 + 1e-8) ≈ 0.1 → 0.899.
    let (v, vars) = one_param(1.0)?;
    let mut opt = Optimizer::new(
        OptimizerConfig::Adamw {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        },
        vars,
    );
    opt.step(&grads_for(&v, 0.5)?, 0.1)?;
    let p: Vec<f32> = v.as_tensor().to_vec1()?;
    assert!((p[0] - 0.899).abs() < 1e-6, "{}", p[0]);
    Ok(())
}

#[test]
fn sgd_momentum_matches_pytorch_closed_form() -> Result<()> {
    // torch.optim.SGD(lr=0.1, momentum=0.9): buf₁ = g = 0.5 → p = 0.95;
    // buf₂ = 0.9·0.5 + 0.5 = 0.95 → p = 0.95 − 0.095 = 0.855.
    let (v, vars) = one_param(1.0)?;
    let mut opt = Optimizer::new(
        OptimizerConfig::Sgd {
            momentum: 0.9,
            weight_decay: 0.0,
        },
        vars,
    );
    opt.step(&grads_for(&v, 0.5)?, 0.1)?;
    opt.step(&grads_for(&v, 0.5)?, 0.1)?;
    let p: Vec<f32> = v.as_tensor().to_vec1()?;
    assert!((p[0] - 0.855).abs() < 1e-6, "{}", p[0]);
    Ok(())
}

#[test]
fn optimiser_state_round_trips_exactly() -> Result<()> {
    let cfg = OptimizerConfig::default();
    let (a, vars_a) = one_param(1.0)?;
    let mut opt_a = Optimizer::new(cfg.clone(), vars_a);
    for g in [0.3, -0.2, 0.7] {
        opt_a.step(&grads_for(&a, g)?, 0.01)?;
    }
    let (state, t) = opt_a.state()?;
    let (b, vars_b) = one_param(a.as_tensor().to_vec1::<f32>()?[0])?;
    let mut opt_b = Optimizer::new(cfg, vars_b);
    opt_b.load_state(&state.into_iter().collect(), t)?;
    opt_a.step(&grads_for(&a, 0.4)?, 0.01)?;
    opt_b.step(&grads_for(&b, 0.4)?, 0.01)?;
    assert_eq!(
        a.as_tensor().to_vec1::<f32>()?,
        b.as_tensor().to_vec1::<f32>()?
    );
    Ok(())
}

#[test]
fn schedules_follow_their_formulas() {
    let warm = Schedule {
        lr: 1.0,
        warmup_steps: 10,
        decay: Decay::Constant,
    };
    assert!((warm.lr(0, 0.0) - 0.1).abs() < 1e-12);
    assert!((warm.lr(9, 0.0) - 1.0).abs() < 1e-12);
    assert!((warm.lr(50, 0.5) - 1.0).abs() < 1e-12);
    let cos = Schedule {
        lr: 1.0,
        warmup_steps: 0,
        decay: Decay::Cosine {
            final_fraction: 0.0,
        },
    };
    assert!((cos.lr(5, 0.5) - 0.5).abs() < 1e-12, "cos(π/2) halfway");
    assert!(cos.lr(10, 1.0).abs() < 1e-12);
    let step = Schedule {
        lr: 1.0,
        warmup_steps: 0,
        decay: Decay::Step {
            every: 10,
            gamma: 0.1,
        },
    };
    assert!((step.lr(25, 0.0) - 0.01).abs() < 1e-12);
}

#[test]
fn recipes_validate_and_round_trip_through_toml() -> Result<()> {
    for name in TrainConfig::RECIPES {
        let c = TrainConfig::recipe(name)?;
        c.validate()?;
        let text = toml::to_string(&c)?;
        let back = TrainConfig::from_toml(&text)?;
        assert_eq!(back, c, "{name}");
    }
    assert!(TrainConfig::recipe("imagenet").is_err());
    let mut c = TrainConfig::recipe("demo")?;
    c.classes_per_batch = 1;
    assert!(c.validate().is_err());
    Ok(())
}
