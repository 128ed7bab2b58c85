fn main() {
    print!("{}", handover_operator::crd::crd_yaml().unwrap());
}
