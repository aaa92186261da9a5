use super::{parse, ExprError, Ty};

const KNOWN: [&str; 6] = [
    "heat_out",
    "gas_in",
    "running",
    "boiler-1.temp",
    "line.3.flow",
    "a b",
];

fn known(n: &str) -> bool {
    KNOWN.contains(&n) || n == "a" || n == "b"
}

fn ty(name: &str) -> Ty {
    if name == "running" {
        Ty::Bool
    } else {
        Ty::Number
    }
}

/// Evaluates `text` with each name's value from `values` (by name).
fn eval(text: &str, values: &[(&str, f64)]) -> f64 {
    let parsed = parse(text, &known).unwrap_or_else(|e| panic!("{text}: {e}"));
    let names = parsed.names.clone();
    let program = parsed
        .compile(&|i| ty(&names[i]))
        .unwrap_or_else(|e| panic!("{text}: {e:?}"));
    let inputs: Vec<f64> = names
        .iter()
        .map(|n| {
            values
                .iter()
                .find(|(k, _)| k == n)
                .map_or(f64::NAN, |v| v.1)
        })
        .collect();
    program.eval(&inputs, &mut Vec::new())
}

fn errors(text: &str) -> Vec<ExprError> {
    match parse(text, &known) {
        Err(e) => vec![e],
        Ok(p) => {
            let names = p.names.clone();
            p.compile(&|i| ty(&names[i])).err().unwrap_or_default()
        }
    }
}

#[test]
fn arithmetic_follows_the_usual_precedence_and_is_all_float() {
    assert!(
        (eval(
            "heat_out / max(gas_in * 10.5, 0.001) * 100",
            &[("heat_out", 21.0), ("gas_in", 4.0)]
        ) - 50.0)
            .abs()
            < 1e-9
    );
    assert_eq!(eval("5 / 2", &[]), 2.5);
    assert_eq!(eval("1 + 2 * 3 ^ 2", &[]), 19.0);
    assert_eq!(eval("-2 ^ 2", &[]), -4.0);
    assert_eq!(eval("2 ^ 3 ^ 2", &[]), 512.0);
    assert_eq!(eval("7 % 4 - (1 - 3)", &[]), 5.0);
    assert_eq!(eval("1e3 + .5", &[]), 1000.5);
}

#[test]
fn comparisons_logic_and_functions() {
    assert_eq!(
        eval(
            "running && heat_out < 1",
            &[("running", 1.0), ("heat_out", 0.5)]
        ),
        1.0
    );
    assert_eq!(
        eval(
            "!running || heat_out >= 1",
            &[("running", 1.0), ("heat_out", 0.5)]
        ),
        0.0
    );
    assert_eq!(eval("heat_out == 3 != false", &[("heat_out", 3.0)]), 1.0);
    assert_eq!(eval("min(3, a, 2)", &[("a", 1.0)]), 1.0);
    assert_eq!(eval("avg(1, 2, 6)", &[]), 3.0);
    assert_eq!(eval("abs(-2) + sqrt(9)", &[]), 5.0);
    assert_eq!(eval("round(2.345, 2)", &[]), 2.35);
    assert_eq!(eval("round(2.5)", &[]), 3.0);
    assert_eq!(eval("clamp(a, 0, 10)", &[("a", 12.0)]), 10.0);
    assert_eq!(
        eval(
            "if(running, a, b)",
            &[("running", 0.0), ("a", 1.0), ("b", 2.0)]
        ),
        2.0
    );
    // The branch not taken may divide by zero: its value is not used.
    assert_eq!(eval("if(a > 0, b / a, 0)", &[("a", 0.0), ("b", 2.0)]), 0.0);
}

#[test]
fn what_has_no_value_stays_not_finite_for_the_caller_to_judge() {
    assert!(eval("a / b", &[("a", 1.0), ("b", 0.0)]).is_infinite());
    assert!(eval("min(sqrt(a), 3)", &[("a", -1.0)]).is_nan());
    assert!(eval("clamp(a, 10, 0)", &[("a", 1.0)]).is_nan());
}

#[test]
fn device_ids_with_dashes_and_dots_are_names_and_a_dash_between_names_subtracts() {
    assert_eq!(eval("boiler-1.temp-2", &[("boiler-1.temp", 5.0)]), 3.0);
    assert_eq!(eval("a-b", &[("a", 5.0), ("b", 1.0)]), 4.0);
    assert_eq!(eval("line.3.flow * 2", &[("line.3.flow", 5.0)]), 10.0);
    assert_eq!(eval("`a b` + 1", &[("a b", 5.0)]), 6.0);
    let p = parse("gas_in + gas_in * heat_out", &known).unwrap();
    assert_eq!(p.names, ["gas_in", "heat_out"]);
}

#[test]
fn problems_are_named_with_their_column() {
    let e = errors("heat_out + gaz_in");
    assert_eq!(
        (e[0].at, e[0].message.as_str()),
        (11, "unknown name `gaz_in`")
    );
    assert_eq!(
        errors("boiler-1.tmp * 2")[0].message,
        "unknown name `boiler-1.tmp`"
    );
    assert!(errors("pow(a, 2)")[0]
        .message
        .starts_with("unknown function `pow`"));
    assert_eq!(errors("(a + 1")[0].message, "`)` expected to close `(`");
    assert_eq!(
        errors("a +")[0].message,
        "the expression ends where a value was expected"
    );
    assert_eq!(errors("a b")[0].message, "an operator was expected here");
    assert_eq!(errors("")[0].message, "empty expression");
    assert_eq!(errors("a # b")[0].message, "unexpected `#`");
    assert_eq!(errors("`x y` + 1")[0].message, "unknown name `x y`");
}

#[test]
fn types_that_cannot_be_combined_are_each_named() {
    let e = errors("running + 1 && heat_out");
    let msgs: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        msgs,
        [
            "`+` needs a number, this is true/false",
            "`&&` needs true/false, this is a number",
            "`&&` needs true/false, this is a number",
        ],
        "{e:?}"
    );
    assert_eq!(e[0].at, 0);
    assert_eq!(
        errors("if(a, 1, 2)")[0].message,
        "the condition of `if` needs true/false, this is a number"
    );
    assert_eq!(
        errors("if(running, 1, true)")[0].message,
        "the other branch of `if` needs a number, this is true/false"
    );
    assert_eq!(
        errors("clamp(a, 1)")[0].message,
        "`clamp` takes 3 arguments, not 2"
    );
    assert_eq!(
        errors("a == running")[0].message,
        "`==` needs a number, this is true/false"
    );
}

#[test]
fn a_constant_division_by_zero_is_refused_and_a_variable_one_is_not() {
    let e = errors("a / (2 - 2)");
    assert_eq!(
        e[0].message,
        "division by zero: the right side of `/` is always 0"
    );
    assert_eq!(e[0].at, 4);
    assert!(!errors("a % 0").is_empty());
    assert!(errors("a / b").is_empty());
    assert!(errors("a / 0.5").is_empty());
}

#[test]
fn a_hostile_text_is_refused_before_it_can_nest_deep() {
    // Either would overflow the stack of the thread that parses or compiles it.
    let deep = format!("{}1{}", "(".repeat(300), ")".repeat(300));
    assert_eq!(errors(&deep)[0].message, "nested more than 64 deep");
    assert_eq!(
        errors(&"-".repeat(200))[0].message,
        "nested more than 64 deep"
    );
    let long = vec!["1"; 600].join("+");
    assert_eq!(errors(&long)[0].message, "longer than 1000 characters");
    // A long chain within the limit compiles.
    assert_eq!(eval(&vec!["1"; 400].join("+"), &[]), 400.0);
}

#[test]
fn a_program_knows_its_type() {
    let p = parse("running && a > 1", &known).unwrap();
    let names = p.names.clone();
    assert_eq!(p.compile(&|i| ty(&names[i])).unwrap().ty, Ty::Bool);
}
