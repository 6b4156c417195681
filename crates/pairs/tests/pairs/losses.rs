//! Loss values on hand-computable geometry and gradients against finite differences.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use siamese_pairs::loss::triplet::{mine, triplet_on, Mining};
use siamese_pairs::{
    contrastive, contrastive_batch, prototypical, proxy_softmax, triplet, BceHead, Distance,
    Reduction,
};

use crate::common::{check1, circle, grad_check, scalar, uniform, values};

/// Pairs on the unit circle (chord length `2 sin(θ/2)`, squared `2 - 2cos θ`), margin 1.5:
/// 1. same, 0° vs 90°: D = 2, term 1/2 * 2 = 1
/// 2. different, 0° vs 60°: r = 1, term 1/2 * (1.5 - 1)^2 = 0.125
/// 3. different, 0° vs 180°: r = 2 > margin, term 0
/// 4. same, 30° vs 30°: D = 0, term 0
///
/// Mean (1 + 0.125) / 4 = 0.28125, the same for squared L2 and L2 (both use r^2 = D).
#[test]
fn contrastive_on_circle_points() -> Result<()> {
    let e1 = circle(&[0.0, 0.0, 0.0, 30.0])?;
    let e2 = circle(&[90.0, 60.0, 180.0, 30.0])?;
    let same = Tensor::new(&[1f32, 0.0, 0.0, 1.0], &Device::Cpu)?;
    for d in [Distance::SquaredL2, Distance::L2] {
        let out = contrastive(&e1, &e2, &same, 1.5, d)?;
        check1(scalar(&out.loss)?, 0.28125, 1e-9, d.name());
        assert_eq!((out.active, out.total), (2, 4));
        assert!(!out.collapsed);
    }
    // Statistics in the distance's own units: squared L2 (2 + 0) / 2 and (1 + 4) / 2.
    let out = contrastive(&e1, &e2, &same, 1.5, Distance::SquaredL2)?;
    check1(out.mean_pos_dist as f64, 1.0, 1e-6, "mean_pos squared");
    check1(out.mean_neg_dist as f64, 2.5, 1e-6, "mean_neg squared");
    // L2: (sqrt 2 + 0) / 2 and (1 + 2) / 2.
    let out = contrastive(&e1, &e2, &same, 1.5, Distance::L2)?;
    check1(
        out.mean_pos_dist as f64,
        2f64.sqrt() / 2.0,
        1e-6,
        "mean_pos l2",
    );
    check1(out.mean_neg_dist as f64, 1.5, 1e-6, "mean_neg l2");

    // Cosine distances 1, 0.5, 2, 0 with margin 0.75: terms 1/2, 1/2 * 0.25^2, 0, 0.
    let out = contrastive(&e1, &e2, &same, 0.75, Distance::Cosine)?;
    check1(scalar(&out.loss)?, (0.5 + 0.03125) / 4.0, 1e-9, "cosine");
    // L1 distances 2, 1/2 + √3/2, 2, 0 with margin 2: terms 1/2 * 4, 1/2 * (1.5 - √3/2)^2, 0, 0.
    let out = contrastive(&e1, &e2, &same, 2.0, Distance::L1)?;
    let t2 = 0.5 * (1.5 - 3f64.sqrt() / 2.0).powi(2);
    check1(scalar(&out.loss)?, (2.0 + t2) / 4.0, 1e-9, "l1");
    Ok(())
}

/// All pairs of [0°, 90°, 180°] with labels [0, 0, 1], margin 1.5, squared L2:
/// (0,1) same D = 2 -> 1; (0,2) different r = 2 -> 0; (1,2) different r = √2 ->
/// 1/2 (1.5 - √2)^2. Mean over 3 pairs.
#[test]
fn contrastive_over_a_labelled_batch() -> Result<()> {
    let emb = circle(&[0.0, 90.0, 180.0])?;
    let out = contrastive_batch(&emb, &[0, 0, 1], 1.5, Distance::SquaredL2)?;
    let want = (1.0 + 0.5 * (1.5 - 2f64.sqrt()).powi(2)) / 3.0;
    check1(scalar(&out.loss)?, want, 1e-9, "contrastive_batch");
    assert_eq!((out.active, out.total), (2, 3));
    check1(out.mean_pos_dist as f64, 2.0, 1e-6, "mean_pos");
    check1(out.mean_neg_dist as f64, 3.0, 1e-6, "mean_neg");
    Ok(())
}

/// Rows [0°, 60°, 90°, 90°] with labels [0, 0, 1, 0], squared L2 (2 - 2cos θ), margin 0.2:
/// - (0, 1, 2): d_ap = 1, d_an = 2: max(0, 1 - 2 + 0.2) = 0
/// - (0, 3, 2): d_ap = 2, d_an = 2: 0.2
/// - (3, 1, 2): d_ap = 2 - √3, d_an = 0: 2 - √3 + 0.2
#[test]
fn triplet_on_given_triplets() -> Result<()> {
    let emb = circle(&[0.0, 60.0, 90.0, 90.0])?;
    let labels = [0, 0, 1, 0];
    let triplets = [(0, 1, 2), (0, 3, 2), (3, 1, 2)];
    let s3 = 3f64.sqrt();
    let sum = 0.2 + (2.0 - s3 + 0.2);
    let mean = triplet_on(
        &emb,
        &labels,
        &triplets,
        0.2,
        Distance::SquaredL2,
        Reduction::Mean,
    )?;
    check1(scalar(&mean.loss)?, sum / 3.0, 1e-9, "mean");
    assert_eq!((mean.active, mean.total), (2, 3));
    let active = triplet_on(
        &emb,
        &labels,
        &triplets,
        0.2,
        Distance::SquaredL2,
        Reduction::MeanActive,
    )?;
    check1(scalar(&active.loss)?, sum / 2.0, 1e-9, "mean over active");
    // Same-label pairs i < j: (0,1) 1, (0,3) 2, (1,3) 2 - √3; different: (0,2) 2,
    // (1,2) 2 - √3, (2,3) 0.
    check1(
        mean.mean_pos_dist as f64,
        (5.0 - s3) / 3.0,
        1e-6,
        "mean_pos",
    );
    check1(
        mean.mean_neg_dist as f64,
        (4.0 - s3) / 3.0,
        1e-6,
        "mean_neg",
    );
    assert!(!mean.collapsed);
    assert!(triplet_on(
        &emb,
        &labels,
        &[(0, 1, 4)],
        0.2,
        Distance::L2,
        Reduction::Mean
    )
    .is_err());
    Ok(())
}

/// `triplet` is mining followed by `triplet_on` with the miner's reduction.
#[test]
fn triplet_is_mine_then_loss() -> Result<()> {
    let emb = Tensor::from_vec(uniform(21, 8 * 3), (8, 3), &Device::Cpu)?;
    let labels = [0, 0, 1, 1, 2, 2, 0, 1];
    for mining in [Mining::BatchAll, Mining::BatchHard, Mining::SemiHard] {
        let full = triplet(&emb, &labels, 0.3, mining, Distance::L2)?;
        let mined = mine(&emb, &labels, mining, Distance::L2)?;
        let parts = triplet_on(&emb, &labels, &mined, 0.3, Distance::L2, mining.reduction())?;
        check1(scalar(&full.loss)?, scalar(&parts.loss)?, 1e-12, "loss");
        assert_eq!(full.total, mined.len());
        assert_eq!(full.active, parts.active);
    }
    Ok(())
}

/// A batch with no valid triplet (every label distinct) gives a zero loss whose backward
/// still works, and identical encodings are reported as collapsed.
#[test]
fn degenerate_batches() -> Result<()> {
    let dev = Device::Cpu;
    let emb = Tensor::from_vec(uniform(3, 6), (3, 2), &dev)?;
    let out = triplet(
        &emb,
        &[0, 1, 2],
        0.2,
        Mining::BatchHard,
        Distance::SquaredL2,
    )?;
    assert_eq!((out.total, out.active), (0, 0));
    assert_eq!(scalar(&out.loss)?, 0.0);
    assert!(out.mean_pos_dist.is_nan());
    let var = candle_core::Var::from_tensor(&emb)?;
    let out = triplet(
        var.as_tensor(),
        &[0, 1, 2],
        0.2,
        Mining::BatchAll,
        Distance::L2,
    )?;
    out.loss.backward()?;

    let same_point = Tensor::ones((4, 3), DType::F32, &dev)?;
    for d in Distance::ALL {
        let out = triplet(&same_point, &[0, 0, 1, 1], 0.2, Mining::SemiHard, d)?;
        assert!(out.collapsed, "{}", d.name());
        let out = contrastive_batch(&same_point, &[0, 0, 1, 1], 1.0, d)?;
        assert!(out.collapsed, "{}", d.name());
    }
    Ok(())
}

/// Bad shapes and arguments are errors naming the op.
#[test]
fn loss_argument_errors() -> Result<()> {
    let dev = Device::Cpu;
    let e = Tensor::zeros((4, 3), DType::F32, &dev)?;
    let e_short = Tensor::zeros((3, 3), DType::F32, &dev)?;
    let same = Tensor::zeros(4, DType::F32, &dev)?;
    let err = |r: candle_core::Result<siamese_pairs::LossOutput>| match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    assert!(err(contrastive(&e, &e_short, &same, 1.0, Distance::L2)).contains("contrastive"));
    assert!(err(contrastive(
        &e,
        &e,
        &same.narrow(0, 0, 2)?,
        1.0,
        Distance::L2
    ))
    .contains("[N]"));
    assert!(err(contrastive(&e, &e, &same, -1.0, Distance::L2)).contains("margin"));
    assert!(err(contrastive_batch(&e, &[0, 1], 1.0, Distance::L2)).contains("labels"));
    assert!(err(triplet(
        &same,
        &[0; 4],
        0.2,
        Mining::BatchHard,
        Distance::L2
    ))
    .contains("[N, D]"));
    Ok(())
}

/// Weights [-1, -2], bias 0.5:
/// - (1,0) vs (0,1): |diff| = (1,1), logit -2.5, different: loss ln(1 + e^-2.5)
/// - (0.5,0.25) vs (0.5,0): |diff| = (0,0.25), logit 0, same: loss ln 2
/// - (1,0) vs (0,0) with weights [-1000, 0] below: logit -999.5, same: loss 999.5 (stable)
#[test]
fn bce_head_values() -> Result<()> {
    let dev = Device::Cpu;
    let head = BceHead::new(
        Tensor::new(&[[-1.0f64, -2.0]], &dev)?,
        Tensor::new(&[0.5f64], &dev)?,
    )?;
    let e1 = Tensor::new(&[[1.0f64, 0.0], [0.5, 0.25]], &dev)?;
    let e2 = Tensor::new(&[[0.0f64, 1.0], [0.5, 0.0]], &dev)?;
    let same = Tensor::new(&[0u8, 1], &dev)?;
    crate::common::check(
        &values(&head.logits(&e1, &e2)?)?,
        &[-2.5, 0.0],
        1e-12,
        "logits",
    );
    let sig = 1.0 / (1.0 + 2.5f64.exp());
    crate::common::check(
        &values(&head.probability(&e1, &e2)?)?,
        &[sig, 0.5],
        1e-12,
        "probability",
    );
    let out = head.loss(&e1, &e2, &same)?;
    let want = ((1.0 + (-2.5f64).exp()).ln() + 2f64.ln()) / 2.0;
    check1(scalar(&out.loss)?, want, 1e-12, "bce");
    // Logit 0 predicts "different" (p = 0.5 is not > 0.5) for a same pair: 1 wrong.
    assert_eq!((out.active, out.total), (1, 2));
    check1(out.mean_pos_dist as f64, 0.25, 1e-7, "L1 of the same pair");
    check1(
        out.mean_neg_dist as f64,
        2.0,
        1e-7,
        "L1 of the different pair",
    );

    let steep = BceHead::new(
        Tensor::new(&[[-1000.0f64, 0.0]], &dev)?,
        Tensor::new(&[0.5f64], &dev)?,
    )?;
    let far1 = Tensor::new(&[[1.0f64, 0.0]], &dev)?;
    let far2 = Tensor::new(&[[0.0f64, 0.0]], &dev)?;
    let out = steep.loss(&far1, &far2, &Tensor::new(&[1f64], &dev)?)?;
    check1(scalar(&out.loss)?, 999.5, 1e-9, "stable for large logits");
    Ok(())
}

/// `BceHead::load` creates `head.weight` [1, D] and `head.bias` [1] in the variable map.
#[test]
fn bce_head_parameter_names() -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let head = BceHead::load(5, vb)?;
    let data = varmap.data().lock().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    assert_eq!(names, ["head.bias", "head.weight"]);
    assert_eq!(data["head.weight"].as_tensor().dims(), &[1, 5]);
    assert_eq!(data["head.bias"].as_tensor().dims(), &[1]);
    assert_eq!(head.weight().dims(), &[1, 5]);
    assert!(BceHead::new(
        Tensor::zeros((2, 5), DType::F32, &Device::Cpu)?,
        head.bias().clone()
    )
    .is_err());
    Ok(())
}

/// Gradients of every loss with respect to the encodings (and the head's parameters) match
/// central finite differences in f64. Inputs are random, away from the hinges' kinks.
#[test]
fn loss_gradients_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    let (n, d) = (4, 3);
    let x0 = uniform(5, 2 * n * d);
    let same = Tensor::new(&[1f64, 0.0, 1.0, 0.0], &dev)?;
    for dist in Distance::ALL {
        // Margins large enough that the different pairs are inside them (non-zero terms).
        let margin = if dist == Distance::Cosine { 1.5 } else { 3.0 };
        grad_check(
            &x0,
            &[2 * n, d],
            |x| {
                let out = contrastive(
                    &x.narrow(0, 0, n)?,
                    &x.narrow(0, n, n)?,
                    &same,
                    margin,
                    dist,
                )?;
                Ok(out.loss)
            },
            1e-6,
            &format!("contrastive {}", dist.name()),
        )?;
    }
    let labels = [0, 0, 0, 1, 1, 2, 2, 1];
    for dist in Distance::ALL {
        grad_check(
            &x0,
            &[2 * n, d],
            |x| Ok(contrastive_batch(x, &labels, 2.0, dist)?.loss),
            1e-6,
            &format!("contrastive_batch {}", dist.name()),
        )?;
        for mining in [Mining::BatchAll, Mining::BatchHard, Mining::SemiHard] {
            grad_check(
                &x0,
                &[2 * n, d],
                |x| Ok(triplet(x, &labels, 1.0, mining, dist)?.loss),
                1e-6,
                &format!("triplet {mining:?} {}", dist.name()),
            )?;
        }
    }
    // BCE: with respect to the encodings, then to the weight.
    let head = BceHead::new(
        Tensor::new(&[[0.7f64, -1.3, 0.4]], &dev)?,
        Tensor::new(&[0.2f64], &dev)?,
    )?;
    grad_check(
        &x0,
        &[2 * n, d],
        |x| {
            Ok(head
                .loss(&x.narrow(0, 0, n)?, &x.narrow(0, n, n)?, &same)?
                .loss)
        },
        1e-6,
        "bce encodings",
    )?;
    let e = Tensor::from_vec(x0.clone(), (2 * n, d), &dev)?;
    grad_check(
        &[0.7, -1.3, 0.4, 0.2],
        &[4],
        |p| {
            let head = BceHead::new(p.narrow(0, 0, 3)?.reshape((1, 3))?, p.narrow(0, 3, 1)?)?;
            Ok(head
                .loss(&e.narrow(0, 0, n)?, &e.narrow(0, n, n)?, &same)?
                .loss)
        },
        1e-6,
        "bce parameters",
    )?;
    Ok(())
}

/// Label tensors of the usual integer dtypes read back as `u32`; floats and matrices fail.
#[test]
fn labels_from_tensors() -> Result<()> {
    let dev = Device::Cpu;
    let want = vec![3u32, 0, 7];
    assert_eq!(
        siamese_pairs::labels_to_vec(&Tensor::new(&[3u32, 0, 7], &dev)?)?,
        want
    );
    assert_eq!(
        siamese_pairs::labels_to_vec(&Tensor::new(&[3u8, 0, 7], &dev)?)?,
        want
    );
    assert_eq!(
        siamese_pairs::labels_to_vec(&Tensor::new(&[3i64, 0, 7], &dev)?)?,
        want
    );
    assert!(siamese_pairs::labels_to_vec(&Tensor::new(&[-1i64], &dev)?).is_err());
    assert!(siamese_pairs::labels_to_vec(&Tensor::new(&[1f32], &dev)?).is_err());
    assert!(siamese_pairs::labels_to_vec(&Tensor::new(&[[1u32]], &dev)?).is_err());
    Ok(())
}

/// Prototypical loss on 1-D encodings, scale 1. Class A at 0 and 1, class B at 3 and 5, and a
/// singleton class C at 2 (a prototype, never a query). Leave-one-out own distances:
/// 0 → 1: 1; 1 → 0: 1; 3 → 5: 4; 5 → 3: 4. Other classes' means: A 0.5, B 4, C 2.
/// - row 0: A 1, B 16, C 4 → log(1 + e^-15 + e^-3)
/// - row 1: A 1, B 9, C 1 → log(1 + e^-8 + 1)
/// - row 2: B 4, A 6.25, C 1 → log(1 + e^-2.25 + e^3) (misclassified: C is nearer)
/// - row 3: B 4, A 20.25, C 9 → log(1 + e^-16.25 + e^-5)
#[test]
fn prototypical_on_a_line() -> Result<()> {
    let e = Tensor::new(&[[0f64], [1.0], [3.0], [5.0], [2.0]], &Device::Cpu)?;
    let labels = [7, 7, 3, 3, 9];
    let out = prototypical(&e, &labels, 1.0)?;
    let ln = |x: f64| x.ln();
    let want = (ln(1.0 + (-15f64).exp() + (-3f64).exp())
        + ln(2.0 + (-8f64).exp())
        + ln(1.0 + (-2.25f64).exp() + 3f64.exp())
        + ln(1.0 + (-16.25f64).exp() + (-5f64).exp()))
        / 4.0;
    check1(scalar(&out.loss)?, want, 1e-9, "prototypical");
    assert_eq!((out.active, out.total), (1, 4));
    // Own-class distances 1, 1, 4, 4; the eight others 16, 4, 9, 1, 6.25, 1, 20.25, 9.
    check1(out.mean_pos_dist as f64, 2.5, 1e-6, "mean own distance");
    check1(
        out.mean_neg_dist as f64,
        66.5 / 8.0,
        1e-6,
        "mean other distance",
    );
    // The scale divides distances: doubling it on halved squared distances changes nothing.
    let half = (&e * std::f64::consts::FRAC_1_SQRT_2)?;
    let out2 = prototypical(&half, &labels, 2.0)?;
    check1(scalar(&out2.loss)?, want, 1e-9, "prototypical, scaled");
    // No class with two rows, or one class only: a zero loss that still back-propagates.
    let none = prototypical(&e, &[1, 2, 3, 4, 5], 1.0)?;
    assert_eq!((scalar(&none.loss)?, none.total), (0.0, 0));
    let one = prototypical(&e, &[1, 1, 1, 1, 1], 1.0)?;
    assert_eq!((scalar(&one.loss)?, one.total), (0.0, 0));
    assert!(one.loss.backward().is_ok());
    // Bad inputs are errors, not panics.
    assert!(prototypical(&e, &labels[..3], 1.0).is_err());
    assert!(prototypical(&e, &labels, 0.0).is_err());
    assert!(prototypical(&e, &labels, f64::NAN).is_err());
    Ok(())
}

/// The prototypical loss's gradient matches finite differences, with unequal class sizes.
#[test]
fn prototypical_gradient_matches_finite_differences() -> Result<()> {
    let (n, d) = (8, 3);
    let x0 = uniform(11, n * d);
    let labels = [0, 0, 0, 1, 1, 2, 2, 3];
    grad_check(
        &x0,
        &[n, d],
        |x| Ok(prototypical(x, &labels, 3.0)?.loss),
        1e-6,
        "prototypical",
    )
}

/// Proxy loss on the unit circle, scale 1. Proxies of classes 0, 1, 2 at 0°, 90° and 180°
/// with lengths 2, 0.5 and 1 (only directions count); rows at 0° (class 0), 90° with length 3
/// (class 0, misclassified: proxy 1 is nearer) and 180° (class 2). Cosines:
/// - row 0: 1, 0, −1 → log(1 + e^-1 + e^-2)
/// - row 1: 0, 1, 0 → log(2 + e) − 0
/// - row 2: −1, 0, 1 → log(1 + e^-1 + e^-2)
#[test]
fn proxy_softmax_on_the_circle() -> Result<()> {
    let dev = Device::Cpu;
    let e = Tensor::new(&[[1f64, 0.0], [0.0, 3.0], [-1.0, 0.0]], &dev)?;
    let w = Tensor::new(&[[2f64, 0.0], [0.0, 0.5], [-1.0, 0.0]], &dev)?;
    let labels = [0, 0, 2];
    let out = proxy_softmax(&e, &w, &labels, 1.0)?;
    let easy = (1.0 + (-1f64).exp() + (-2f64).exp()).ln();
    let want = (2.0 * easy + (2.0 + 1f64.exp()).ln()) / 3.0;
    check1(scalar(&out.loss)?, want, 1e-9, "proxy softmax");
    assert_eq!((out.active, out.total), (1, 3));
    assert!(!out.collapsed);
    // Squared distances 2 − 2cos between unit vectors: own 0, 2, 0; the six others
    // 2, 4, 0, 2, 4, 2.
    check1(
        out.mean_pos_dist as f64,
        2.0 / 3.0,
        1e-6,
        "mean own distance",
    );
    check1(
        out.mean_neg_dist as f64,
        14.0 / 6.0,
        1e-6,
        "mean other distance",
    );
    // The scale multiplies the cosines: at scale 2 row 0's term is log(1 + e^-2 + e^-4).
    let out2 = proxy_softmax(&e.narrow(0, 0, 1)?, &w, &[0], 2.0)?;
    check1(
        scalar(&out2.loss)?,
        (1.0 + (-2f64).exp() + (-4f64).exp()).ln(),
        1e-9,
        "proxy softmax, scale 2",
    );
    // Bad inputs are errors, not panics.
    assert!(proxy_softmax(&e, &w, &[0, 0, 3], 1.0).is_err());
    assert!(proxy_softmax(&e, &w, &labels[..2], 1.0).is_err());
    assert!(proxy_softmax(&e, &w, &labels, 0.0).is_err());
    assert!(proxy_softmax(&e, &w.narrow(1, 0, 1)?, &labels, 1.0).is_err());
    assert!(proxy_softmax(&e, &w.to_dtype(DType::F32)?, &labels, 1.0).is_err());
    Ok(())
}

/// The proxy loss's gradients, with respect to the encodings and to the proxies, match
/// finite differences.
#[test]
fn proxy_softmax_gradients_match_finite_differences() -> Result<()> {
    let (n, c, d) = (6, 4, 3);
    let dev = Device::Cpu;
    let e0 = uniform(21, n * d);
    let w0 = uniform(22, c * d);
    let labels = [0, 1, 1, 2, 3, 3];
    let w = Tensor::from_vec(w0.clone(), (c, d), &dev)?;
    grad_check(
        &e0,
        &[n, d],
        |x| Ok(proxy_softmax(x, &w, &labels, 4.0)?.loss),
        1e-6,
        "proxy softmax, encodings",
    )?;
    let e = Tensor::from_vec(e0, (n, d), &dev)?;
    grad_check(
        &w0,
        &[c, d],
        |x| Ok(proxy_softmax(&e, x, &labels, 4.0)?.loss),
        1e-6,
        "proxy softmax, proxies",
    )
}
