//! The shared-weight pair model: one parameter set, and a pair loss's gradient is the sum of
//! the two branches' contributions.

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder, VarMap};
use siamese_pairs::{contrastive, Distance, SiamesePair};

use crate::common::{check, uniform, values};

fn encoder() -> Result<(VarMap, Linear)> {
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let enc = linear(3, 2, vb.pp("enc"))?;
    // Deterministic weights instead of candle's unseeded initialisation.
    varmap.set_one(
        "enc.weight",
        Tensor::from_vec(uniform(1, 6), (2, 3), &Device::Cpu)?,
    )?;
    varmap.set_one(
        "enc.bias",
        Tensor::from_vec(uniform(2, 2), 2, &Device::Cpu)?,
    )?;
    Ok((varmap, enc))
}

#[test]
fn one_encoder_one_parameter_set() -> Result<()> {
    let dev = Device::Cpu;
    let (varmap, enc) = encoder()?;
    let model = SiamesePair::new(enc.clone(), Distance::SquaredL2);
    assert_eq!(varmap.all_vars().len(), 2, "weight and bias, once");

    let x1 = Tensor::from_vec(uniform(3, 12), (4, 3), &dev)?;
    let x2 = Tensor::from_vec(uniform(4, 12), (4, 3), &dev)?;
    let same = Tensor::new(&[1f64, 0.0, 1.0, 0.0], &dev)?;

    // One forward over both halves equals two separate forwards.
    let (e1, e2) = model.encode_pair(&x1, &x2, true)?;
    check(
        &values(&e1)?,
        &values(&enc.forward(&x1)?)?,
        1e-12,
        "first half",
    );
    check(
        &values(&e2)?,
        &values(&enc.forward(&x2)?)?,
        1e-12,
        "second half",
    );
    let direct = Distance::SquaredL2.paired(&e1, &e2)?;
    check(
        &values(&model.distance(&x1, &x2)?)?,
        &values(&direct)?,
        1e-12,
        "distance",
    );

    // The pair loss's gradient on the shared weights ...
    let grads = contrastive(&e1, &e2, &same, 2.0, Distance::SquaredL2)?
        .loss
        .backward()?;
    // ... equals branch 1's (branch 2 detached) plus branch 2's (branch 1 detached).
    let b1 = contrastive(
        &enc.forward(&x1)?,
        &enc.forward(&x2)?.detach(),
        &same,
        2.0,
        Distance::SquaredL2,
    )?
    .loss
    .backward()?;
    let b2 = contrastive(
        &enc.forward(&x1)?.detach(),
        &enc.forward(&x2)?,
        &same,
        2.0,
        Distance::SquaredL2,
    )?
    .loss
    .backward()?;
    for var in varmap.all_vars() {
        let t = var.as_tensor();
        let total = values(grads.get(t).expect("the pair loss reaches every parameter"))?;
        let g1 = values(b1.get(t).expect("branch 1 reaches every parameter"))?;
        let g2 = values(b2.get(t).expect("branch 2 reaches every parameter"))?;
        let sum: Vec<f64> = g1.iter().zip(&g2).map(|(a, b)| a + b).collect();
        check(&total, &sum, 1e-12, "total = branch 1 + branch 2");
        assert!(g1.iter().any(|v| v.abs() > 1e-6) && g2.iter().any(|v| v.abs() > 1e-6));
        assert!(
            g1.iter().zip(&g2).any(|(a, b)| (a - b).abs() > 1e-6),
            "branches differ"
        );
    }
    Ok(())
}

#[test]
fn encode_pair_checks_shapes() -> Result<()> {
    let (_, enc) = encoder()?;
    let model = SiamesePair::new(enc, Distance::L2);
    let a = Tensor::zeros((4, 3), DType::F64, &Device::Cpu)?;
    let b = Tensor::zeros((5, 3), DType::F64, &Device::Cpu)?;
    let err = model
        .encode_pair(&a, &b, false)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("encode_pair")));
    assert_eq!(model.encode(&a, false)?.dims(), &[4, 2]);
    assert_eq!(model.distance_kind(), Distance::L2);
    Ok(())
}
