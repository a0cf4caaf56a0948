"""The 10 Rust function specs of the issue-7 acceptance run (benches/bench_providers.py)."""

from __future__ import annotations

from tritonlm.providers.rust import RustFunctionSpec

RUST_SPECS: tuple[RustFunctionSpec, ...] = (
    RustFunctionSpec(
        name="reverse_string",
        description="Return the characters of s in reverse order (Unicode scalar values, not bytes).",
        parameters=(("s", "&str"),),
        return_type="String",
        examples=('reverse_string("abc") == "cba"', 'reverse_string("") == ""'),
    ),
    RustFunctionSpec(
        name="sum_of_evens",
        description="Return the sum of the even numbers in values.",
        parameters=(("values", "&[i64]"),),
        return_type="i64",
        examples=("sum_of_evens(&[1, 2, 3, 4]) == 6", "sum_of_evens(&[]) == 0"),
    ),
    RustFunctionSpec(
        name="parse_integer",
        description=(
            "Parse s (surrounding whitespace allowed) as a signed 64-bit integer. "
            "Return Err with a message naming the input when it is not one."
        ),
        parameters=(("s", "&str"),),
        return_type="Result<i64, String>",
        examples=('parse_integer(" 42 ") == Ok(42)', 'parse_integer("4x").is_err()'),
    ),
    RustFunctionSpec(
        name="max_of",
        description=(
            "Return the largest element of items, or None when items is empty. Generic over a type "
            "parameter T with the trait bounds PartialOrd + Copy."
        ),
        parameters=(("items", "&[T]"),),
        return_type="Option<T>",
        examples=("max_of(&[3, 9, 2]) == Some(9)", "max_of::<i32>(&[]) == None"),
    ),
    RustFunctionSpec(
        name="longest",
        description=(
            "Return whichever of a and b is longer (a on a tie). Uses one lifetime 'a for both inputs and the output."
        ),
        parameters=(("a", "&'a str"), ("b", "&'a str")),
        return_type="&'a str",
        examples=('longest("ab", "abc") == "abc"',),
    ),
    RustFunctionSpec(
        name="count_words",
        description="Count how often each whitespace-separated word occurs in text (case-sensitive).",
        parameters=(("text", "&str"),),
        return_type="std::collections::HashMap<String, usize>",
        examples=('count_words("a b a")["a"] == 2',),
    ),
    RustFunctionSpec(
        name="is_palindrome",
        description="Whether s reads the same backwards, ignoring case and non-alphanumeric characters.",
        parameters=(("s", "&str"),),
        return_type="bool",
        examples=('is_palindrome("A man, a plan, a canal: Panama")', '!is_palindrome("abc")'),
    ),
    RustFunctionSpec(
        name="fibonacci",
        description="Return the n-th Fibonacci number (fibonacci(0) == 0, fibonacci(1) == 1), or None on u64 overflow.",
        parameters=(("n", "u32"),),
        return_type="Option<u64>",
        examples=("fibonacci(10) == Some(55)", "fibonacci(100) == None"),
    ),
    RustFunctionSpec(
        name="safe_divide",
        description='Divide a by b; return Err("division by zero".to_string()) when b is 0.',
        parameters=(("a", "i32"), ("b", "i32")),
        return_type="Result<i32, String>",
        examples=("safe_divide(7, 2) == Ok(3)", "safe_divide(1, 0).is_err()"),
    ),
    RustFunctionSpec(
        name="first_word",
        description="Return the first whitespace-separated word of s (empty when there is none). Uses a lifetime 'a.",
        parameters=(("s", "&'a str"),),
        return_type="&'a str",
        examples=('first_word("hello world") == "hello"', 'first_word("   ") == ""'),
    ),
)

assert len(RUST_SPECS) == 10 and len({s.name for s in RUST_SPECS}) == 10
